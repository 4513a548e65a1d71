//! A topology with a custom processor, for logic the operators do not express: devices
//! send heartbeats; a device silent for longer than a timeout raises one alert, found
//! by a wall-clock punctuation, so it fires even when no heartbeat arrives at all. The
//! last heartbeat of each device is kept in a store the processor reaches through its
//! typed handle.
//!
//! ```text
//! cargo run --release --example custom_processor -- run device-monitor --embedded
//! ```

use std::time::Duration;

use engine::Catalog;
use engine::record::{Record, Timestamp};
use engine::serde::Serdes;
use engine::topology::{
    ProcessingError, Processor, ProcessorContext, PunctuationType, ScheduleId, StoreBuilder,
    StoreRef, Topic, Topology, TopologyBuilder, TopologyError,
};

fn heartbeats() -> Topic<String, String> {
    Topic::new("device-heartbeats", Serdes::string(), Serdes::string())
}

fn alerts() -> Topic<String, String> {
    Topic::new("device-alerts", Serdes::string(), Serdes::string())
}

/// A device is silent after this long without a heartbeat.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Device id -> wall-clock time of its last heartbeat (`-1` once an alert went out).
struct Monitor {
    last_seen: StoreRef<String, i64>,
}

impl Processor<String, String, String, String> for Monitor {
    fn init(
        &mut self,
        ctx: &mut ProcessorContext<'_, String, String>,
    ) -> Result<(), ProcessingError> {
        ctx.schedule(Duration::from_secs(5), PunctuationType::WallClockTime);
        Ok(())
    }

    fn process(
        &mut self,
        record: Record<String, String>,
        ctx: &mut ProcessorContext<'_, String, String>,
    ) -> Result<(), ProcessingError> {
        let now = ctx.wall_clock_time();
        let mut last_seen = ctx.store(&self.last_seen)?;
        if last_seen.get(&record.key)? == Some(-1) {
            let back = format!("{} is back", record.key);
            last_seen.put(&record.key, &now)?;
            ctx.forward(record.with_value(back));
        } else {
            last_seen.put(&record.key, &now)?;
        }
        Ok(())
    }

    fn punctuate(
        &mut self,
        _schedule: ScheduleId,
        now: Timestamp,
        ctx: &mut ProcessorContext<'_, String, String>,
    ) -> Result<(), ProcessingError> {
        let timeout = i64::try_from(TIMEOUT.as_millis()).unwrap_or(i64::MAX);
        let silent: Vec<(String, i64)> = ctx
            .store(&self.last_seen)?
            .all()?
            .into_iter()
            .filter(|(_, at)| *at >= 0 && now - at > timeout)
            .collect();
        for (device, at) in silent {
            ctx.store(&self.last_seen)?.put(&device, &-1)?;
            let alert = format!("{device} silent for {} s", (now - at) / 1000);
            ctx.forward(Record::new(device, alert, now));
        }
        Ok(())
    }
}

fn topology() -> Result<Topology, TopologyError> {
    let b = TopologyBuilder::new("device-monitor");
    let last_seen = b.add_store(StoreBuilder::persistent(
        "last-seen",
        Serdes::string(),
        Serdes::i64(),
    ));
    let store = last_seen.clone();
    b.stream(&heartbeats())
        .process_with_stores(&[last_seen.name()], move || Monitor {
            last_seen: store.clone(),
        })
        .named("monitor")
        .to(&alerts());
    b.build()
}

fn main() -> std::process::ExitCode {
    let catalog = Catalog::new().with(
        "device-monitor",
        "device-heartbeats -> an alert per device silent for 30 s (wall-clock) -> device-alerts",
        |_ctx| topology(),
    );
    engine::cli::main(catalog)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use engine::testing::TestDriver;

    #[test]
    fn a_silent_device_raises_one_alert_and_its_return_is_reported() {
        let driver = TestDriver::new(super::topology().unwrap());
        let beat = |device: &str| {
            driver
                .input(&super::heartbeats())
                .pipe(device.to_string(), "ok".to_string())
                .unwrap();
        };
        beat("pump-1");
        beat("pump-2");
        driver.advance_wall_clock(Duration::from_secs(20)).unwrap();
        beat("pump-2");
        driver.advance_wall_clock(Duration::from_secs(15)).unwrap();
        driver.advance_wall_clock(Duration::from_secs(20)).unwrap();
        let alerts = driver.output(&super::alerts()).read_key_values();
        assert_eq!(alerts.len(), 2, "{alerts:?}");
        assert!(alerts[0].0 == "pump-1" && alerts[0].1.starts_with("pump-1 silent for 3"));
        assert_eq!(alerts[1].0, "pump-2");
        beat("pump-1");
        assert_eq!(
            driver.output(&super::alerts()).read_values(),
            vec!["pump-1 is back".to_string()]
        );
    }
}
