//! Fuzzes the GGUF header parser: any byte string must parse or be refused with an error,
//! never panic, overflow or allocate without bound; a parsed file's tensors must all lie in it.

#![no_main]

use std::hint::black_box;

use libfuzzer_sys::fuzz_target;
use realm_engine::gguf::GgufFile;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_vec(data.to_vec()) else {
        return;
    };
    for t in &file.tensors {
        let bytes = file.tensor_data(t).expect("a parsed tensor's data lie in the file");
        assert_eq!(bytes.len() as u64, t.byte_size);
        assert_eq!(t.file_offset % file.alignment, 0);
        assert!(t.element_count() <= i64::MAX as u64);
        // Read every byte, so a bad range would show up under the address sanitizer.
        black_box(bytes.iter().fold(0u8, |acc, &b| acc ^ b));
    }
    // The accessors and the display forms used by `realm inspect`.
    for (key, value) in &file.metadata {
        black_box(format!("{key} = {value}"));
        black_box(file.get(key));
    }
    let _ = black_box(file.architecture());
});
