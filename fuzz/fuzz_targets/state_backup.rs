#![no_main]
use libfuzzer_sys::fuzz_target;

const ORG_KEY: &[u8] = include_bytes!("../org-key.asc");

fuzz_target!(|data: &[u8]| orgkey::fuzzing::state_backup(ORG_KEY, data));
