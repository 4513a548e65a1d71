//! The codec benchmark: this engine's Avro codec against serde_avro_fast, apache-avro's
//! value-tree path and serde_json, encoding and decoding realistic execution tickets.

use std::hint::black_box;
use std::time::{Duration, Instant};

use engine::serde::avro::{DecodePlan, EncodePlan, Schema};
use serde::Serialize;
use topologies::tickets::{EXECUTION_TICKET_SCHEMA, ExecutionTicket, sample_tickets};

/// The ticket schema plus one reader-only field with a default, used to
/// benchmark a resolving (writer ≠ reader) decode plan.
pub fn execution_ticket_reader_schema_v2() -> String {
    let mut v: serde_json::Value = match serde_json::from_str(EXECUTION_TICKET_SCHEMA) {
        Ok(v) => v,
        Err(_) => return EXECUTION_TICKET_SCHEMA.to_string(),
    };
    if let Some(fields) = v.get_mut("fields").and_then(|f| f.as_array_mut()) {
        fields.push(serde_json::json!({"name": "tenant", "type": "string", "default": "default"}));
    }
    v.to_string()
}

/// One measured benchmark case.
#[derive(Debug, Clone, Serialize)]
pub struct CodecBenchRow {
    /// Codec under test, e.g. `ours`, `serde_avro_fast`.
    pub codec: String,
    /// Operation, e.g. `encode`, `decode (identity)`.
    pub op: String,
    /// Records processed per second on one core.
    pub records_per_sec: f64,
    /// Average encoded size of one record in bytes.
    pub bytes_per_record: f64,
}

pub(super) fn measure(duration: Duration, mut one_pass: impl FnMut() -> usize) -> f64 {
    // Warm up caches and allocator before timing.
    one_pass();
    let start = Instant::now();
    let mut records = 0usize;
    while start.elapsed() < duration {
        records += one_pass();
    }
    records as f64 / start.elapsed().as_secs_f64()
}

fn row(codec: &str, op: &str, rps: f64, bytes: f64) -> CodecBenchRow {
    CodecBenchRow {
        codec: codec.into(),
        op: op.into(),
        records_per_sec: rps,
        bytes_per_record: bytes,
    }
}

/// Runs every benchmark case for about `duration_per_case` and returns the
/// rows. Cases whose codec fails on the fixture are reported with 0 records/s
/// rather than aborting the run.
pub fn run_codec_bench(duration_per_case: Duration) -> Vec<CodecBenchRow> {
    let tickets = sample_tickets(256);
    let mut rows = Vec::new();
    let Ok(schema) = Schema::parse_str(EXECUTION_TICKET_SCHEMA) else {
        return rows;
    };
    let Ok(v2) = Schema::parse_str(&execution_ticket_reader_schema_v2()) else {
        return rows;
    };
    let (Ok(enc), Ok(ident), Ok(resolving)) = (
        EncodePlan::new(&schema),
        DecodePlan::identity(&schema),
        DecodePlan::new(&schema, &v2),
    ) else {
        return rows;
    };

    let mut encoded: Vec<Vec<u8>> = Vec::with_capacity(tickets.len());
    for t in &tickets {
        let mut out = Vec::new();
        if enc.encode(t, &mut out).is_err() {
            return rows;
        }
        encoded.push(out);
    }
    let avro_bytes = encoded.iter().map(Vec::len).sum::<usize>() as f64 / tickets.len() as f64;
    let json: Vec<Vec<u8>> = tickets
        .iter()
        .filter_map(|t| serde_json::to_vec(t).ok())
        .collect();
    let json_bytes = json.iter().map(Vec::len).sum::<usize>() as f64 / json.len().max(1) as f64;

    let mut buf = Vec::with_capacity(1024);
    rows.push(row(
        "ours",
        "encode",
        measure(duration_per_case, || {
            let mut n = 0;
            for t in &tickets {
                buf.clear();
                n += enc.encode(t, &mut buf).is_ok() as usize;
                black_box(&buf);
            }
            n
        }),
        avro_bytes,
    ));
    rows.push(row(
        "ours",
        "decode (identity)",
        measure(duration_per_case, || {
            encoded
                .iter()
                .filter(|b| black_box(ident.decode::<ExecutionTicket>(b)).is_ok())
                .count()
        }),
        avro_bytes,
    ));
    rows.push(row(
        "ours",
        "decode (resolving +1 field)",
        measure(duration_per_case, || {
            encoded
                .iter()
                .filter(|b| black_box(resolving.decode::<ExecutionTicket>(b)).is_ok())
                .count()
        }),
        avro_bytes,
    ));

    if let Ok(fast_schema) = EXECUTION_TICKET_SCHEMA.parse::<serde_avro_fast::Schema>() {
        let mut config = serde_avro_fast::ser::SerializerConfig::new(&fast_schema);
        let mut fbuf = Vec::with_capacity(1024);
        rows.push(row(
            "serde_avro_fast",
            "encode",
            measure(duration_per_case, || {
                let mut n = 0;
                for t in &tickets {
                    fbuf.clear();
                    match serde_avro_fast::to_datum(t, std::mem::take(&mut fbuf), &mut config) {
                        Ok(b) => {
                            fbuf = b;
                            n += 1;
                        }
                        Err(_) => fbuf = Vec::with_capacity(1024),
                    }
                    black_box(&fbuf);
                }
                n
            }),
            avro_bytes,
        ));
        rows.push(row(
            "serde_avro_fast",
            "decode",
            measure(duration_per_case, || {
                encoded
                    .iter()
                    .filter(|b| {
                        black_box(serde_avro_fast::from_datum_slice::<ExecutionTicket>(
                            b,
                            &fast_schema,
                        ))
                        .is_ok()
                    })
                    .count()
            }),
            avro_bytes,
        ));
    }

    let inner = schema.inner();
    rows.push(row(
        "apache-avro (Value)",
        "encode",
        measure(duration_per_case, || {
            let mut n = 0;
            for t in &tickets {
                if let Ok(v) = apache_avro::to_value(t)
                    && let Ok(b) = apache_avro::to_avro_datum(inner, v)
                {
                    black_box(b);
                    n += 1;
                }
            }
            n
        }),
        avro_bytes,
    ));
    rows.push(row(
        "apache-avro (Value)",
        "decode",
        measure(duration_per_case, || {
            let mut n = 0;
            for b in &encoded {
                if let Ok(v) = apache_avro::from_avro_datum(inner, &mut b.as_slice(), None)
                    && let Ok(t) = apache_avro::from_value::<ExecutionTicket>(&v)
                {
                    black_box(t);
                    n += 1;
                }
            }
            n
        }),
        avro_bytes,
    ));

    let mut jbuf = Vec::with_capacity(2048);
    rows.push(row(
        "serde_json",
        "encode",
        measure(duration_per_case, || {
            let mut n = 0;
            for t in &tickets {
                jbuf.clear();
                n += serde_json::to_writer(&mut jbuf, t).is_ok() as usize;
                black_box(&jbuf);
            }
            n
        }),
        json_bytes,
    ));
    rows.push(row(
        "serde_json",
        "decode",
        measure(duration_per_case, || {
            json.iter()
                .filter(|b| black_box(serde_json::from_slice::<ExecutionTicket>(b)).is_ok())
                .count()
        }),
        json_bytes,
    ));
    rows
}

/// Renders rows as a fixed-width text table, with each row's throughput
/// relative to serde_avro_fast for the same operation kind.
pub fn format_table(rows: &[CodecBenchRow]) -> String {
    let base = |op: &str| {
        let kind = if op.starts_with("encode") {
            "encode"
        } else {
            "decode"
        };
        rows.iter()
            .find(|r| r.codec == "serde_avro_fast" && r.op == kind)
            .map(|r| r.records_per_sec)
    };
    let mut s = format!(
        "{:<22} {:<28} {:>14} {:>10} {:>12}\n",
        "codec", "op", "records/s", "bytes/rec", "vs fast"
    );
    for r in rows {
        let rel = base(&r.op)
            .filter(|b| *b > 0.0)
            .map(|b| format!("{:.2}x", r.records_per_sec / b))
            .unwrap_or_else(|| "-".into());
        s.push_str(&format!(
            "{:<22} {:<28} {:>14.0} {:>10.1} {:>12}\n",
            r.codec, r.op, r.records_per_sec, r.bytes_per_record, rel
        ));
    }
    s
}
