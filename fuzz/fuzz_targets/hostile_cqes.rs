//! Arbitrary CQE streams (any result, any flags, any bid) and chunk operations against a
//! pool: see `bufring::model::hostile` for the input format and the rules it checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    bufring::model::hostile::run(data);
});
