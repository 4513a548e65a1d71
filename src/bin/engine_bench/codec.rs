//! Codec figures: this engine's Avro codec against serde_avro_fast, apache-avro's value
//! path and serde_json, on execution tickets.

use std::time::Duration;

use super::codec_bench::{CodecBenchRow, format_table, run_codec_bench};

use super::report::{Figure, Target};

/// Runs the codec benchmark for `per_case` per case and turns its rows into figures.
pub fn figures(per_case: Duration) -> (Vec<Figure>, String) {
    let rows = run_codec_bench(per_case);
    let table = format_table(&rows);
    let find = |codec: &str, op: &str| {
        rows.iter()
            .find(|r| r.codec == codec && r.op == op)
            .map(|r| r.records_per_sec)
    };
    let mut figures = Vec::new();
    for (kind, fast) in [
        ("encode", find("serde_avro_fast", "encode")),
        ("decode", find("serde_avro_fast", "decode")),
    ] {
        for r in rows.iter().filter(|r| r.op.starts_with(kind)) {
            if r.codec == "serde_avro_fast" {
                figures.push(Figure::new(
                    "codec",
                    format!("{kind}: serde_avro_fast"),
                    r.records_per_sec,
                    "records/s",
                    None,
                    None,
                ));
                continue;
            }
            // The target is on our identity path; the rest are context.
            let targeted = r.codec == "ours" && (r.op == "encode" || r.op == "decode (identity)");
            let name = format!(
                "{}: {}{}",
                kind,
                r.codec,
                r.op.strip_prefix(kind).unwrap_or("")
            );
            let reference = fast.map(|f| ("serde_avro_fast".to_string(), f));
            let target = targeted.then_some(Target::RatioAtLeast(1.2));
            figures.push(match (reference, r.records_per_sec > 0.0) {
                (_, false) => {
                    Figure::not_measured("codec", name, "the codec failed on the fixture")
                }
                (reference, true) => Figure::new(
                    "codec",
                    name,
                    r.records_per_sec,
                    "records/s",
                    reference,
                    target,
                )
                .with_note_if(r.codec == "serde_json", "JSON, not Avro"),
            });
        }
    }
    if let (Some(avro), Some(json)) = (bytes_of(&rows, "ours"), bytes_of(&rows, "serde_json")) {
        figures.push(Figure::new(
            "codec",
            "bytes per record: Avro",
            avro,
            "bytes",
            Some(("JSON".into(), json)),
            None,
        ));
    }
    (figures, table)
}

fn bytes_of(rows: &[CodecBenchRow], codec: &str) -> Option<f64> {
    rows.iter()
        .find(|r| r.codec == codec)
        .map(|r| r.bytes_per_record)
}

trait NoteIf {
    fn with_note_if(self, cond: bool, note: &str) -> Self;
}

impl NoteIf for Figure {
    fn with_note_if(self, cond: bool, note: &str) -> Self {
        if cond { self.with_note(note) } else { self }
    }
}
