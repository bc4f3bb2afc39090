#!/usr/bin/env python3
"""The logic of scripts/kernel-matrix.sh: what each kernel should support (from the README's
kernel table), the plan each guest runs, the host run, and the final table.

  matrix.py expect RELEASE
      The features the README's table promises for a kernel release, as JSON.
  matrix.py plan RELEASE META_OUT TESTS... [-- EXAMPLES...]
      Prints the plan (/kmatrix/plan, read by init.c) for a kernel release: every test binary
      (with --skip for the tests skips.txt rules out on that kernel), bufring probe --json,
      the demo in each mode, the examples. Writes what it decided to META_OUT (JSON).
  matrix.py run-host PLAN DIR
      Runs a plan on this machine (programs from DIR instead of /kmatrix), printing the same
      KMATRIX lines the guest's /init prints. Every program is bounded by its timeout.
  matrix.py report OUT_MD LABEL=META:LOG...
      Checks every log against its plan and the README, prints the table (and writes it as
      markdown to OUT_MD), exits 1 if anything failed.
Only python3's standard library.
"""
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
README = os.path.join(ROOT, "README.md")
SKIPS = os.path.join(HERE, "skips.txt")

# Probe key -> the start of its row in the README's "Kernel requirements" table.
ROWS = {
    "buffer_ring": "buffer rings",
    "kernel_allocated_ring": "kernel-allocated ring",
    "read_multishot": "multishot read",
    "pbuf_status": "PBUF_STATUS",
    "bundles": "bundles (",
    "incremental": "incremental consumption",
    "incremental_bundles": "bundles on incremental rings",
    "min_left": "`min_left`",
}
# Demo modes and the feature each needs (README: "bufring demo ... --mode").
DEMOS = {"classic": None, "emulated": None, "incremental": "incremental", "bundle": "bundles"}
# Bytes the demo's peer sends (demo.rs: SENDS).
DEMO_BYTES = 4096 + 8192 + 20480 + 4096
# Timeouts in the guest, seconds (TCG runs the slowest binary here in about 35 s).
TEST_TIMEOUT = 300
TOOL_TIMEOUT = 60
# The examples check their own work and bound themselves (echo: 60 s of its own).
EXAMPLE_TIMEOUT = 120


def version(release):
    m = re.match(r"(\d+)\.(\d+)", release)
    if not m:
        sys.exit(f"cannot read a version from {release!r}")
    return (int(m.group(1)), int(m.group(2)))


def readme_table():
    """{probe key: (major, minor) or None (no version: backport-dependent)}"""
    text = open(README, encoding="utf-8").read()
    sec = text.split("## Kernel requirements", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in sec.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not line.startswith("|"):
            continue
        for key, start in ROWS.items():
            if cells[0].startswith(start) and key not in rows:
                m = re.match(r"(\d+)\.(\d+)$", cells[1])
                rows[key] = (int(m.group(1)), int(m.group(2))) if m else None
    missing = set(ROWS) - set(rows)
    if missing:
        sys.exit(f"README's kernel table has no row for {sorted(missing)}")
    return rows


def expect(release):
    """{probe key: True/False, or None where the table allows either}"""
    v = version(release)
    out = {}
    for key, since in readme_table().items():
        out[key] = None if since is None else v >= since
    # min_left is a registration option of incremental rings (README: "Kernel":
    # Unsupported(MinLeft); backported): without incremental rings it cannot be there.
    if out["incremental"] is False:
        out["min_left"] = False
    return out


def skips(release):
    """{binary: [(test or '*', why)]} for a kernel release."""
    v = version(release)
    have = expect(release)
    out = {}
    for line in open(SKIPS, encoding="utf-8"):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        when, binary, test, why = line.split(None, 3)
        if when.startswith("before-"):
            applies = v < version(when[len("before-"):])
            tag = f"kernel before {when[7:]}"
        else:
            if when not in have:
                sys.exit(f"skips.txt: unknown feature {when!r}")
            applies = have[when] is False
            tag = f"needs {when}"
        if applies:
            out.setdefault(binary, []).append((test, f"{tag}: {why}"))
    return out


def cmd_plan(release, meta_out, names):
    tests, examples = names, []
    if "--" in names:
        i = names.index("--")
        tests, examples = names[:i], names[i + 1:]
    sk = skips(release)
    have = expect(release)
    stage = os.environ.get("KMATRIX_STAGE")
    if stage:
        # A skip that names no test is stale (a renamed test would silently run and fail, or a
        # removed one hide nothing): refuse it.
        for binary, rules in sk.items():
            if binary in examples:
                continue
            if binary not in tests:
                if os.environ.get("KMATRIX_ONLY"):
                    continue  # left out of this run on purpose
                sys.exit(f"skips.txt names {binary}, which is neither a kernel test binary nor an example")
            listed = subprocess.run([os.path.join(stage, binary), "--list", "--format", "terse"],
                                    capture_output=True, text=True, timeout=60).stdout
            names = {l.rsplit(": ", 1)[0] for l in listed.splitlines() if l.endswith(": test")}
            for test, _ in rules:
                if test != "*" and test not in names:
                    sys.exit(f"skips.txt: {binary} has no test {test!r}")
    plan = ["# generated by scripts/kmatrix/matrix.py for " + release,
            "env BUFRING_REQUIRE_URING=1", "env RUST_BACKTRACE=1"]
    if os.environ.get("KMATRIX_EMULATED") == "1":
        # QEMU without KVM runs tens of times slower: tests that bound heavy work by a wall
        # clock (not a timing claim) allow for it.
        plan.append("env BUFRING_EMULATED=1")
    meta = {"release": release, "expect": have, "runs": []}
    for t in tests:
        rules = sk.get(t, [])
        if any(test == "*" for test, _ in rules):
            why = "; ".join(w for test, w in rules if test == "*")
            meta["runs"].append({"name": t, "kind": "test", "skipped_all": why})
            continue
        # --show-output: the output of passing tests too, so self-skips ("SKIPPED:") count.
        args = ["--exact", "--show-output"]
        for test, _ in rules:
            args += ["--skip", test]
        plan.append(f"run {t} {TEST_TIMEOUT} /kmatrix/{t} {' '.join(args)}")
        meta["runs"].append({"name": t, "kind": "test", "skipped": rules})
    plan.append(f"run probe {TOOL_TIMEOUT} /kmatrix/bufring probe --json")
    meta["runs"].append({"name": "probe", "kind": "probe"})
    for mode, needs in DEMOS.items():
        name = f"demo-{mode}"
        plan.append(f"run {name} {TOOL_TIMEOUT} /kmatrix/bufring demo --json --mode {mode}")
        # The error the demo must stop with where the kernel lacks what the mode needs: the
        # oldest missing feature, or EINVAL from the multishot recv (6.0) it always makes.
        if needs == "incremental" and have["buffer_ring"] is False:
            error = "lacks buffer_ring"
        elif needs is not None and have[needs] is False:
            error = f"lacks {needs}"
        elif version(release) < (6, 0):
            error = "Invalid argument"
        else:
            error = None
        meta["runs"].append({"name": name, "kind": "demo", "error": error})
    for e in examples:
        rules = sk.get(e, [])
        if rules:
            meta["runs"].append({"name": e, "kind": "example",
                                 "skipped_all": "; ".join(w for _, w in rules)})
            continue
        plan.append(f"run {e} {EXAMPLE_TIMEOUT} /kmatrix/{e}")
        meta["runs"].append({"name": e, "kind": "example"})
    with open(meta_out, "w") as f:
        json.dump(meta, f, indent=1)
    print("\n".join(plan))


def cmd_run_host(plan_path, bindir):
    env = dict(os.environ)
    say = lambda s: print(s, flush=True)
    say(f"KMATRIX KERNEL {os.uname().release}")
    for line in open(plan_path):
        w = line.split()
        if not w or w[0].startswith("#"):
            continue
        if w[0] == "env":
            k, v = w[1].split("=", 1)
            env[k] = v
            continue
        name, timeout, argv = w[1], int(w[2]), w[3:]
        argv[0] = os.path.join(os.path.abspath(bindir), os.path.basename(argv[0]))
        say(f"KMATRIX BEGIN {name}")
        start = time.monotonic()
        try:
            p = subprocess.run(argv, env=env, stdout=sys.stdout, stderr=subprocess.STDOUT,
                               timeout=timeout, cwd="/tmp", start_new_session=True)
            rc = p.returncode
            status = f"exit={rc}" if rc >= 0 else f"signal={-rc}"
        except subprocess.TimeoutExpired:
            status = "timeout"
        except OSError as e:
            status = f"exec-failed ({e})"
        say(f"KMATRIX RESULT {name} {status} secs={time.monotonic() - start:.1f}")
    say("KMATRIX DONE")


def blocks(log):
    """{name: (output lines, result fields or None)}, and the kernel release line."""
    out, cur, kernel = {}, None, None
    for raw in open(log, encoding="utf-8", errors="replace"):
        line = raw.rstrip("\r\n")
        m = re.search(r"KMATRIX (KERNEL|BEGIN|RESULT) (\S+)(.*)", line)
        if m and m.group(1) == "KERNEL":
            kernel = m.group(2)
        elif m and m.group(1) == "BEGIN":
            cur = m.group(2)
            out[cur] = ([], None)
        elif m and m.group(1) == "RESULT":
            fields = dict(re.findall(r"(\w[\w-]*)=(\S+)", m.group(3)))
            if "timeout" in m.group(3).split():
                fields["timeout"] = "1"
            if "exec-failed" in m.group(3):
                fields["exec-failed"] = "1"
            out[m.group(2)] = (out.get(m.group(2), ([], None))[0], fields)
            cur = None
        elif cur is not None:
            out[cur][0].append(line)
    return out, kernel


def panics(lines, most=2):
    """The first panics in a failed test binary's output (where and the message), so the
    report says why without the console log."""
    found = []
    for i, line in enumerate(lines):
        if "panicked at" in line and len(found) < most:
            msg = lines[i + 1].strip() if i + 1 < len(lines) else ""
            found.append(f"{line.strip()} {msg}"[:400])
    return "".join(f"\n    {p}" for p in found)


def judge(run, block, meta):
    """(status, detail) for one planned run."""
    name = run["name"]
    if run.get("skipped_all"):
        return "skipped", run["skipped_all"]
    if block is None:
        return "failed", "never started (VM died or timed out before it)"
    lines, res = block
    if res is None:
        return "failed", "no result (VM died or timed out during it)"
    secs = res.get("secs", "?")
    if "timeout" in res:
        return "failed", f"timed out after {secs} s"
    if "exec-failed" in res:
        return "failed", "could not be started"
    if "signal" in res:
        return "failed", f"killed by signal {res['signal']}"
    rc = int(res.get("exit", "-1"))
    text = "\n".join(lines)
    kind = run["kind"]
    if kind == "test":
        m = re.findall(r"test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored", text)
        passed, failed, ignored = (sum(int(x[i]) for x in m) for i in range(3)) if m else (0, 0, 0)
        selfskip = len(re.findall(r"^SKIPPED:", text, re.M))
        planned = len(run.get("skipped", []))
        parts = [f"{passed} passed"]
        if failed:
            parts.append(f"{failed} failed")
        if planned:
            parts.append(f"{planned} skipped (" + "; ".join(
                sorted({w.split(':')[0] for _, w in run['skipped']})) + ")")
        if ignored:
            parts.append(f"{ignored} ignored")
        if selfskip:
            parts.append(f"{selfskip} SKIPPED message(s)")
        parts.append(f"{secs} s")
        detail = ", ".join(parts)
        if rc != 0 or not m:
            return "failed", f"exit {rc}: {detail}" + panics(lines)
        if passed == 0:
            return "skipped", detail
        return "passed", detail
    if kind == "probe":
        objs = [l[l.index("{"):] for l in lines if '{"kernel"' in l]
        if rc != 0 or not objs:
            return "failed", f"exit {rc}, no JSON"
        got = json.loads(objs[-1])
        bad = []
        if got.get("kernel") != meta["release"]:
            bad.append(f"kernel {got.get('kernel')} != {meta['release']}")
        for key, want in meta["expect"].items():
            if key not in got:
                bad.append(f"{key} missing")
            elif want is not None and got[key] != want:
                bad.append(f"{key}={str(got[key]).lower()} (README: {str(want).lower()})")
        if bad:
            return "failed", "differs from the README: " + ", ".join(bad)
        yes = [k for k, v in got.items() if v is True]
        return "passed", "matches the README table; yes: " + (", ".join(yes) or "none")
    if kind == "demo":
        if run["error"]:
            if rc != 0 and run["error"] in text:
                return "passed", f"stopped with '{run['error']}', as the README's table says"
            return "failed", f"exit {rc}; expected it to stop with '{run['error']}'"
        objs = [json.loads(l[l.index("{"):]) for l in lines if l.lstrip().startswith('{"res"')]
        total = sum(o["res"] for o in objs)
        if rc != 0 or total != DEMO_BYTES:
            return "failed", f"exit {rc}, {total} of {DEMO_BYTES} bytes"
        return "passed", f"{len(objs)} chunks, all {DEMO_BYTES} bytes"
    return ("passed", f"{secs} s") if rc == 0 else ("failed", f"exit {rc}")


def cmd_report(out_md, specs):
    cols, results, failures = [], {}, 0
    order = []
    for spec in specs:
        label, rest = spec.split("=", 1)
        meta_path, log = rest.split(":", 1)
        meta = json.load(open(meta_path))
        got, kernel = blocks(log) if os.path.exists(log) else ({}, None)
        cols.append(label)
        if kernel != meta["release"]:
            print(f"{label}: the log says kernel {kernel!r}, expected {meta['release']!r}")
            failures += 1
        if not os.path.exists(log) or "KMATRIX DONE" not in open(log, errors="replace").read():
            print(f"{label}: the run did not finish (no KMATRIX DONE)")
            failures += 1
        for run in meta["runs"]:
            if run["name"] not in order:
                order.append(run["name"])
            st = judge(run, got.get(run["name"]), meta)
            results[(run["name"], label)] = st
            failures += st[0] == "failed"
    width = max(len(n) for n in order)
    cw = [max(len(c), 8) for c in cols]
    print()
    print(f"{'binary':<{width}}  " + "  ".join(f"{c:<{w}}" for c, w in zip(cols, cw)))
    for n in order:
        print(f"{n:<{width}}  " + "  ".join(
            f"{results.get((n, c), ('-', ''))[0]:<{w}}" for c, w in zip(cols, cw)))
    print()
    for c in cols:
        for n in order:
            if (n, c) in results:
                st, d = results[(n, c)]
                print(f"{c} x {n}: {st} - {d}")
    md = ["| binary | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for n in order:
        md.append(f"| {n} | " + " | ".join(
            "{} ({})".format(results[(n, c)][0], results[(n, c)][1].split("\n")[0])
            if (n, c) in results else "-" for c in cols) + " |")
    with open(out_md, "w") as f:
        f.write("\n".join(md) + "\n")
    print(f"\n{failures} failure(s)")
    return 1 if failures else 0


def main():
    a = sys.argv[1:]
    if not a:
        sys.exit(__doc__)
    if a[0] == "expect" and len(a) == 2:
        print(json.dumps(expect(a[1])))
    elif a[0] == "plan" and len(a) >= 3:
        cmd_plan(a[1], a[2], a[3:])
    elif a[0] == "run-host" and len(a) == 3:
        cmd_run_host(a[1], a[2])
    elif a[0] == "report" and len(a) >= 3:
        sys.exit(cmd_report(a[1], a[2:]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
