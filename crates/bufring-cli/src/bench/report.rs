//! How results come out: a table (median [min–max], ratio to the reference), JSON lines (one
//! object per contender and figure), and a PNG with the main figure of every scenario.

use std::collections::BTreeMap;
use std::path::Path;

use super::{summary, Common, Scenario};

/// Per contender: figure name -> (unit, higher is better, values over rounds), in first-seen order.
type FigureTable = Vec<(&'static str, &'static str, bool, Vec<f64>)>;

fn figures(rounds: &[Vec<super::Figure>]) -> FigureTable {
    let mut t: FigureTable = Vec::new();
    for r in rounds {
        for f in r {
            match t.iter_mut().find(|e| e.0 == f.name) {
                Some(e) => e.3.push(f.value),
                None => t.push((f.name, f.unit, f.higher_is_better, vec![f.value])),
            }
        }
    }
    t
}

/// Reference medians of a scenario: figure -> median.
fn reference(s: &Scenario) -> BTreeMap<&'static str, f64> {
    s.rows
        .iter()
        .find(|r| r.contender == s.reference && r.skipped.is_none())
        .map(|r| {
            figures(&r.rounds)
                .into_iter()
                .map(|(n, _, _, v)| (n, summary(&v).0))
                .collect()
        })
        .unwrap_or_default()
}

fn num(x: f64) -> String {
    if !x.is_finite() {
        "-".into()
    } else if x == 0.0 {
        "0".into()
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else if x.abs() >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

fn ratio(x: f64, r: Option<&f64>) -> Option<f64> {
    r.filter(|r| **r != 0.0 && r.is_finite() && x.is_finite())
        .map(|r| x / r)
}

pub fn print(results: &[Scenario], common: &Common) {
    if common.json {
        for s in results {
            let refs = reference(s);
            for row in &s.rows {
                if let Some(why) = &row.skipped {
                    println!(
                        "{}",
                        serde_json::json!({
                            "workload": s.workload, "scenario": s.title,
                            "contender": row.contender, "skipped": why,
                        })
                    );
                    continue;
                }
                for (name, unit, _, v) in figures(&row.rounds) {
                    let (med, min, max) = summary(&v);
                    let j = |x: f64| {
                        if x.is_finite() {
                            serde_json::json!(x)
                        } else {
                            serde_json::Value::Null
                        }
                    };
                    println!(
                        "{}",
                        serde_json::json!({
                            "workload": s.workload, "scenario": s.title,
                            "contender": row.contender, "figure": name, "unit": unit,
                            "median": j(med), "min": j(min), "max": j(max),
                            "rounds": v.len(), "reference": s.reference,
                            "ratio": ratio(med, refs.get(name)).map_or(serde_json::Value::Null, j),
                        })
                    );
                }
            }
        }
        return;
    }
    println!("machine: {}", super::sys::machine());
    for s in results {
        let refs = reference(s);
        println!(
            "\n{} — {}\nmedian [min–max] over rounds; ratio = median / {}'s median",
            s.workload, s.title, s.reference
        );
        // Columns: every figure any contender reported, in first-seen order.
        let mut cols: FigureTable = Vec::new();
        for r in &s.rows {
            for f in figures(&r.rounds) {
                if !cols.iter().any(|c| c.0 == f.0) {
                    cols.push(f);
                }
            }
        }
        let mut header = format!("{:<20}", "contender");
        for (i, (name, unit, _, _)) in cols.iter().enumerate() {
            let label = if unit.is_empty() {
                name.to_string()
            } else {
                format!("{name} {unit}")
            };
            header += &format!(" {label:>22}");
            if i == 0 {
                header += &format!(" {:>6}", "ratio");
            }
        }
        println!("{header}");
        for row in &s.rows {
            if let Some(why) = &row.skipped {
                println!("{:<20} {why}", row.contender);
                continue;
            }
            let figs = figures(&row.rounds);
            let mut line = format!("{:<20}", row.contender);
            for (i, (name, _, _, _)) in cols.iter().enumerate() {
                let cell = figs
                    .iter()
                    .find(|f| f.0 == *name)
                    .map(|f| summary(&f.3))
                    .map_or("".to_string(), |(m, lo, hi)| {
                        format!("{} [{}–{}]", num(m), num(lo), num(hi))
                    });
                line += &format!(" {cell:>22}");
                if i == 0 {
                    let med = figs
                        .iter()
                        .find(|f| f.0 == *name)
                        .map_or(f64::NAN, |f| summary(&f.3).0);
                    let r = ratio(med, refs.get(name)).map_or("-".into(), |r| format!("{r:.2}"));
                    line += &format!(" {r:>6}");
                }
            }
            println!("{line}");
        }
    }
}

/// Where a TTF font for the plot's text is found (DejaVu Sans on Debian).
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Draws the first figure of each scenario: one panel per scenario, a bar per contender at its
/// median with a line from min to max.
pub fn plot(results: &[Scenario], path: &Path) -> crate::CliResult {
    use plotters::prelude::*;
    let font = FONTS
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .ok_or("--plot needs a TTF font (install fonts-dejavu-core)")?;
    // The font registry wants 'static bytes: the font lives for the rest of the process.
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| "the font could not be loaded")?;

    // One panel per scenario and plotted figure (the scenario's list, or its main figure).
    let mut panels: Vec<(&Scenario, super::Figure)> = Vec::new();
    for s in results {
        let all: Vec<super::Figure> = s
            .rows
            .iter()
            .flat_map(|r| r.rounds.first().into_iter().flatten().copied())
            .collect();
        let names: Vec<&str> = if s.plot.is_empty() {
            all.first().map(|f| f.name).into_iter().collect()
        } else {
            s.plot.clone()
        };
        for name in names {
            if let Some(f) = all.iter().find(|f| f.name == name) {
                panels.push((s, *f));
            }
        }
    }
    let row_px = 34u32;
    let heights: Vec<u32> = panels
        .iter()
        .map(|(s, _)| 90 + row_px * s.rows.iter().filter(|r| !r.rounds.is_empty()).count() as u32)
        .collect();
    let total: u32 = heights.iter().sum::<u32>().max(100);
    let root = BitMapBackend::new(path, (1000, total)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut rest = root;
    for ((s, first), h) in panels.iter().zip(&heights) {
        let (area, below) = rest.split_vertically(*h);
        rest = below;
        let rows: Vec<(&str, (f64, f64, f64))> = s
            .rows
            .iter()
            .filter(|r| !r.rounds.is_empty())
            .filter_map(|r| {
                let f = figures(&r.rounds).into_iter().find(|f| f.0 == first.name)?;
                Some((r.contender.as_str(), summary(&f.3)))
            })
            .collect();
        let xmax = rows
            .iter()
            .map(|r| r.1 .2)
            .filter(|x| x.is_finite())
            .fold(0.0f64, f64::max)
            .max(1e-9)
            * 1.15;
        let n = rows.len() as f64;
        let mut chart = ChartBuilder::on(&area)
            .caption(
                format!(
                    "{} — {}: {} {} ({})",
                    s.workload,
                    s.title,
                    first.name,
                    first.unit,
                    if first.higher_is_better {
                        "higher is better"
                    } else {
                        "lower is better"
                    }
                ),
                ("sans-serif", 17),
            )
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(170)
            .build_cartesian_2d(0.0..xmax, 0.0..n)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .x_labels(8)
            .light_line_style(WHITE)
            .x_desc(first.unit)
            .label_style(("sans-serif", 13))
            .draw()?;
        for (i, (name, (med, lo, hi))) in rows.iter().enumerate() {
            let y = n - i as f64 - 0.5;
            let color = if *name == s.reference {
                RGBColor(150, 150, 150)
            } else if name.starts_with("pool") {
                RGBColor(40, 110, 200)
            } else if name.starts_with("liburing") {
                RGBColor(230, 140, 30)
            } else {
                RGBColor(110, 170, 110)
            };
            chart.draw_series(std::iter::once(Rectangle::new(
                [(0.0, y - 0.35), (*med, y + 0.35)],
                color.filled(),
            )))?;
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(*lo, y), (*hi, y)],
                BLACK.stroke_width(2),
            )))?;
            chart.draw_series(std::iter::once(Text::new(
                format!(" {}", num(*med)),
                (*hi, y + 0.2),
                ("sans-serif", 13),
            )))?;
            // backend_coord is in whole-image pixels; the area draws relative to its corner.
            let (px, py) = chart.backend_coord(&(0.0, y));
            let (bx, by) = area.get_base_pixel();
            area.draw(&Text::new(
                name.to_string(),
                (px - bx - 165, py - by - 7),
                ("sans-serif", 14),
            ))?;
        }
    }
    Ok(())
}
