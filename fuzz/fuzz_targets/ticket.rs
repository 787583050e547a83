#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: coflow::fuzz::contain_panics(),
    |data: &[u8]| coflow::fuzz::ticket(data)
);
