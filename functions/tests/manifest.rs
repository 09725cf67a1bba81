//! Manifests: the examples validate; broken ones are refused with the path and the value.

use std::path::Path;

use realm_functions::{Manifest, ManifestError};

fn problems(yaml: &str) -> String {
    match Manifest::parse(yaml) {
        Ok(m) => panic!("accepted a broken manifest: {m:?}"),
        Err(ManifestError::Invalid { problems }) => {
            problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
        }
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[test]
fn the_examples_validate() {
    for f in ["chat/realm.yaml", "batch/realm.yaml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(f);
        let m = Manifest::from_file(&path).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!(m.model.uri, "default");
    }
}

#[test]
fn defaults_fill_what_is_left_out() {
    let m = Manifest::parse("name: tiny\nmodel:\n  uri: default\n").expect("minimal manifest");
    assert_eq!(m.runtime.max_batch, 16);
    assert!(m.triggers.http);
    assert_eq!(m.scaling.max_instances, 10);
}

#[test]
fn broken_manifests_name_the_path_and_value() {
    let base = "name: f\nmodel:\n  uri: default\n";
    let cases: &[(&str, &str)] = &[
        ("name: f\nmodel:\n  uri: default\ncolour: red\n", "unknown field `colour`"),
        ("name: f\nmodel:\n  uri: default\n  shaa: x\n", "model.shaa: unknown field `shaa`"),
        ("name: f\n", "missing field `model`"),
        (&format!("{base}runtime:\n  max_batch: 0\n"), "runtime.max_batch: 0 is out of range"),
        (&format!("{base}runtime:\n  max_batch: lots\n"), "runtime.max_batch: invalid type: string \"lots\""),
        (&format!("{base}runtime:\n  backend: tpu\n"), "runtime.backend: unknown variant `tpu`"),
        (&format!("{base}generation:\n  temperature: 9\n"), "generation.temperature: 9 is out of range"),
        (
            &format!("{base}triggers:\n  events: [com.example.nope]\n"),
            "triggers.events[0]: \"com.example.nope\" is not one of",
        ),
        (&format!("{base}triggers:\n  http: false\n"), "triggers: neither http nor any event"),
        (
            &format!(
                "{base}triggers:\n  events: [aws.s3.ObjectCreated]\n  batch:\n    - events: [Microsoft.Storage.BlobCreated]\n"
            ),
            "triggers.batch[0].events[0]: \"Microsoft.Storage.BlobCreated\" is not a storage event type listed",
        ),
        (
            &format!("{base}triggers:\n  batch:\n    - prefix: in/\n      output: in/results/\n"),
            "triggers.batch[0].output: \"in/results/\" lies under the route's prefix \"in/\"",
        ),
        (
            &format!("{base}triggers:\n  batch:\n    - output: https://host/out/\n"),
            "triggers.batch[0].output: \"https://host/out/\": scheme \"https\" is not one of",
        ),
        (
            &format!("{base}triggers:\n  batch:\n    - output: ../up/\n"),
            "triggers.batch[0].output: \"../up/\" is not a key prefix",
        ),
        (&format!("{base}triggers:\n  batch:\n    - prefx: in/\n"), "triggers.batch[0].prefx: unknown field `prefx`"),
        (
            &format!("{base}scaling:\n  min_instances: 5\n  max_instances: 2\n"),
            "scaling.min_instances: 5 is above scaling.max_instances 2",
        ),
        (&format!("{base}scaling:\n  gpu: nvidia-gtx-1080\n"), "scaling.gpu: unknown variant `nvidia-gtx-1080`"),
        ("name: Chat_Bot\nmodel:\n  uri: default\n", "name: \"Chat_Bot\" is not a DNS label"),
        ("name: f\nmodel:\n  uri: ftp://host/m.gguf\n", "model.uri: \"ftp://host/m.gguf\": scheme \"ftp\""),
        ("name: f\nmodel:\n  uri: default\n  sha256: abc\n", "model.sha256: \"abc\" is not 64 hex digits"),
        ("name: f\nmodel: [1, 2\n", "model"),
        ("", "empty"),
    ];
    for (yaml, want) in cases {
        let got = problems(yaml);
        assert!(got.contains(want), "for\n{yaml}\nwanted {want:?}, got {got:?}");
    }
}

#[test]
fn several_problems_are_all_reported() {
    let got = problems("name: f\nmodel:\n  uri: default\nruntime:\n  max_batch: 0\nscaling:\n  concurrency: 0\n");
    assert!(got.contains("runtime.max_batch") && got.contains("scaling.concurrency"), "{got}");
}

#[test]
fn the_json_schema_describes_every_section() {
    let schema = realm_functions::json_schema();
    let text = schema.to_string();
    for key in ["model", "runtime", "generation", "triggers", "scaling", "limits", "max_batch", "nvidia-l4"] {
        assert!(text.contains(key), "schema lacks {key}");
    }
}

#[test]
fn the_committed_schema_file_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("realm.schema.json");
    let committed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read realm.schema.json")).expect("JSON");
    assert_eq!(
        committed,
        realm_functions::json_schema(),
        "regenerate with `realm function schema > {}`",
        path.display()
    );
}
