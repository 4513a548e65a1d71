package local.streamengine.bench;

import java.io.IOException;
import java.io.InputStream;
import java.time.Duration;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicInteger;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.CloseOptions;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.KStream;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.processor.StateRestoreListener;
import org.apache.kafka.streams.state.KeyValueStore;

/**
 * The Kafka Streams reference application of the benchmark: the engine's {@code ticket-pipeline}
 * and {@code ticket-counts} topologies written with the Kafka Streams DSL, run with Kafka
 * Streams' defaults except where the harness needs otherwise (see {@link #streamsConfig}).
 *
 * <p>For the harness it prints to stdout, one line each:
 * <pre>
 * kstreams: state FROM->TO at_ms=EPOCH_MILLIS
 * kstreams: restore-start store=NAME partition=N start=OFFSET end=OFFSET at_ms=EPOCH_MILLIS
 * kstreams: restore-end store=NAME partition=N records=TOTAL at_ms=EPOCH_MILLIS
 * </pre>
 * Kafka's own logs go to stderr at WARN. Exit status: 0 after SIGTERM/SIGINT and a clean close,
 * 1 when a stream thread died or the close timed out, 2 for bad arguments.
 */
public final class Main {
    private static final String INPUT = "bench.tickets.in";
    private static final String PIPELINE_OUTPUT = "bench.tickets.out";
    private static final String COUNTS_OUTPUT = "bench.tickets.counts";
    private static final String COUNTS_STORE = "tickets-per-plan";
    private static final String CONTRACT_RESOURCE = "/execution-ticket.avsc";
    private static final Duration CLOSE_TIMEOUT = Duration.ofSeconds(30);
    /** The engine's at-least-once commit interval; see {@link #streamsConfig}. */
    private static final long AT_LEAST_ONCE_COMMIT_INTERVAL_MS = 1_000;
    /** The engine's exactly-once commit interval (its default, optimize_for = "latency"). */
    private static final long EXACTLY_ONCE_COMMIT_INTERVAL_MS = 25;

    private static final String USAGE = String.join("\n",
            "usage: java -cp 'bench/kafka-streams/target/classes:bench/kafka-streams/target/dependency/*' \\",
            "         local.streamengine.bench.Main",
            "         --topology ticket-pipeline|ticket-counts",
            "         --bootstrap-servers HOST:PORT[,HOST:PORT...]",
            "         --schema-registry-url URL",
            "         --application-id ID",
            "         --state-dir DIR",
            "         [--processing-guarantee at_least_once|exactly_once_v2]   (default at_least_once)",
            "         [--commit-interval-ms N]   (default: the engine's, 1000 for at_least_once and 25 for exactly_once_v2)");

    private Main() {}

    /** The command line, checked. */
    record Options(
            String topology,
            String bootstrapServers,
            String schemaRegistryUrl,
            String applicationId,
            String stateDir,
            String processingGuarantee,
            Long commitIntervalMs) {

        private static final Set<String> TOPOLOGIES = Set.of("ticket-pipeline", "ticket-counts");
        private static final Set<String> GUARANTEES =
                Set.of(StreamsConfig.AT_LEAST_ONCE, StreamsConfig.EXACTLY_ONCE_V2);
        private static final List<String> REQUIRED = List.of(
                "--topology", "--bootstrap-servers", "--schema-registry-url", "--application-id", "--state-dir");
        private static final List<String> OPTIONAL = List.of("--processing-guarantee", "--commit-interval-ms");

        static Options parse(String[] args) {
            Map<String, String> values = new LinkedHashMap<>();
            for (int i = 0; i < args.length; i += 2) {
                String name = args[i];
                if (!REQUIRED.contains(name) && !OPTIONAL.contains(name)) {
                    throw new IllegalArgumentException("unknown argument " + name);
                }
                if (i + 1 >= args.length) {
                    throw new IllegalArgumentException(name + " needs a value");
                }
                if (values.put(name, args[i + 1]) != null) {
                    throw new IllegalArgumentException(name + " given twice");
                }
            }
            List<String> missing = REQUIRED.stream().filter(n -> !values.containsKey(n)).toList();
            if (!missing.isEmpty()) {
                throw new IllegalArgumentException("missing " + String.join(", ", missing));
            }
            String topology = values.get("--topology");
            if (!TOPOLOGIES.contains(topology)) {
                throw new IllegalArgumentException("unknown topology " + topology);
            }
            String guarantee = values.getOrDefault("--processing-guarantee", StreamsConfig.AT_LEAST_ONCE);
            if (!GUARANTEES.contains(guarantee)) {
                throw new IllegalArgumentException("unknown processing guarantee " + guarantee);
            }
            String commitInterval = values.get("--commit-interval-ms");
            Long commitIntervalMs = commitInterval == null ? null : parseMillis("--commit-interval-ms", commitInterval);
            return new Options(topology, values.get("--bootstrap-servers"), values.get("--schema-registry-url"),
                    values.get("--application-id"), values.get("--state-dir"), guarantee, commitIntervalMs);
        }

        private static long parseMillis(String name, String value) {
            try {
                long millis = Long.parseLong(value);
                if (millis >= 0) {
                    return millis;
                }
            } catch (NumberFormatException e) {
                // reported below, like a negative value
            }
            throw new IllegalArgumentException(name + " wants milliseconds >= 0, not " + value);
        }
    }

    public static void main(String[] args) throws InterruptedException {
        if (args.length == 1 && (args[0].equals("--help") || args[0].equals("-h"))) {
            System.out.println(USAGE);
            return;
        }
        Options options;
        try {
            options = Options.parse(args);
        } catch (IllegalArgumentException e) {
            System.err.println("kafka-streams-bench: " + e.getMessage());
            System.err.println(USAGE);
            System.exit(2);
            return;
        }

        Schema contract = loadContract();
        Serde<GenericRecord> tickets =
                new RegistryAvroSerde(new SchemaRegistryClient(options.schemaRegistryUrl()), contract);
        Topology topology = switch (options.topology()) {
            case "ticket-pipeline" -> ticketPipeline(tickets, contract);
            case "ticket-counts" -> ticketCounts(tickets);
            default -> throw new IllegalStateException("checked by Options.parse: " + options.topology());
        };
        KafkaStreams streams = new KafkaStreams(topology, streamsConfig(options));

        CountDownLatch stopped = new CountDownLatch(1);
        AtomicInteger exitStatus = new AtomicInteger(0);
        streams.setStateListener((newState, oldState) -> {
            report("state " + oldState + "->" + newState);
            if (newState == KafkaStreams.State.ERROR || newState == KafkaStreams.State.NOT_RUNNING) {
                stopped.countDown();
            }
        });
        streams.setGlobalStateRestoreListener(new RestoreReporter());
        streams.setUncaughtExceptionHandler(e -> {
            System.err.println("kafka-streams-bench: a stream thread died, shutting the client down");
            e.printStackTrace();
            exitStatus.set(1);
            return StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });
        // The JVM would end with 143 after SIGTERM whatever the hook does; halting with our own
        // status lets a clean close exit 0.
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            // Leave the group as the engine does on SIGTERM, so a restart with the same
            // application id (the harness's restore runs) does not wait out the session.
            CloseOptions close = CloseOptions.groupMembershipOperation(
                    CloseOptions.GroupMembershipOperation.LEAVE_GROUP).withTimeout(CLOSE_TIMEOUT);
            if (!streams.close(close)) {
                System.err.println("kafka-streams-bench: Kafka Streams did not close within " + CLOSE_TIMEOUT);
                exitStatus.set(1);
            }
            System.out.flush();
            System.err.flush();
            Runtime.getRuntime().halt(exitStatus.get());
        }, "kafka-streams-bench-shutdown"));

        streams.start();
        stopped.await();
        if (streams.state() == KafkaStreams.State.ERROR) {
            // The hook closes the client and halts with this status.
            exitStatus.set(1);
            System.exit(1);
        }
        // Otherwise the close came from the shutdown hook, which ends the process.
    }

    /** PENDING tickets, set RUNNING. Headers go through untouched (Kafka Streams forwards them). */
    static Topology ticketPipeline(Serde<GenericRecord> tickets, Schema contract) {
        Schema status = contract.getField("status").schema();
        GenericData.EnumSymbol pending = new GenericData.EnumSymbol(status, "PENDING");
        GenericData.EnumSymbol running = new GenericData.EnumSymbol(status, "RUNNING");
        StreamsBuilder builder = new StreamsBuilder();
        builder.stream(INPUT, Consumed.with(Serdes.String(), tickets))
                .filter((planId, ticket) -> pending.equals(ticket.get("status")))
                .mapValues(ticket -> {
                    // The record is this stream's own (decoded for it, no other branch sees it),
                    // so it is updated in place rather than copied.
                    ticket.put("status", running);
                    return ticket;
                })
                .to(PIPELINE_OUTPUT, Produced.with(Serdes.String(), tickets));
        return builder.build();
    }

    /** Tickets per plan (the record key), counted in the RocksDB store {@value #COUNTS_STORE}. */
    static Topology ticketCounts(Serde<GenericRecord> tickets) {
        StreamsBuilder builder = new StreamsBuilder();
        KStream<String, String> planIds = builder.stream(INPUT, Consumed.with(Serdes.String(), tickets))
                .mapValues(ticket -> ticket.get("plan_id").toString());
        planIds.groupByKey(Grouped.with(Serdes.String(), Serdes.String()))
                .count(Materialized.<String, Long, KeyValueStore<Bytes, byte[]>>as(COUNTS_STORE))
                .toStream()
                .to(COUNTS_OUTPUT, Produced.with(Serdes.String(), Serdes.Long()));
        return builder.build();
    }

    /**
     * Kafka Streams' defaults, but for the commit interval: Kafka Streams commits every
     * 30000 ms under at_least_once, and with its default 10 MiB record cache the count
     * topology then emits only at commits; the engine commits at-least-once work every
     * 1000 ms, so the harness gives both the same interval. Under exactly_once_v2 the
     * engine commits every 25 ms (its default, optimize_for = "latency"), where Kafka
     * Streams' default is 100 ms: both get 25 ms, so the latency compared is not the
     * interval's.
     */
    static Properties streamsConfig(Options options) {
        Properties config = new Properties();
        config.put(StreamsConfig.APPLICATION_ID_CONFIG, options.applicationId());
        config.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, options.bootstrapServers());
        config.put(StreamsConfig.STATE_DIR_CONFIG, options.stateDir());
        config.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, options.processingGuarantee());
        if (options.commitIntervalMs() != null) {
            config.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, options.commitIntervalMs());
        } else if (options.processingGuarantee().equals(StreamsConfig.AT_LEAST_ONCE)) {
            config.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, AT_LEAST_ONCE_COMMIT_INTERVAL_MS);
        } else {
            config.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, EXACTLY_ONCE_COMMIT_INTERVAL_MS);
        }
        return config;
    }

    private static Schema loadContract() {
        try (InputStream in = Main.class.getResourceAsStream(CONTRACT_RESOURCE)) {
            if (in == null) {
                throw new IllegalStateException(CONTRACT_RESOURCE + " is not on the classpath: build with Maven, "
                        + "which copies it from schemas/execution-ticket/");
            }
            return new Schema.Parser().parse(in);
        } catch (IOException e) {
            throw new IllegalStateException("cannot read the contract schema " + CONTRACT_RESOURCE, e);
        }
    }

    private static void report(String event) {
        System.out.println("kstreams: " + event + " at_ms=" + System.currentTimeMillis());
        System.out.flush();
    }

    /** Reports the restoration of every state store partition. */
    private static final class RestoreReporter implements StateRestoreListener {
        @Override
        public void onRestoreStart(TopicPartition partition, String store, long startOffset, long endOffset) {
            report("restore-start store=" + store + " partition=" + partition.partition()
                    + " start=" + startOffset + " end=" + endOffset);
        }

        @Override
        public void onBatchRestored(TopicPartition partition, String store, long batchEndOffset, long restored) {}

        @Override
        public void onRestoreEnd(TopicPartition partition, String store, long totalRestored) {
            report("restore-end store=" + store + " partition=" + partition.partition()
                    + " records=" + totalRestored);
        }
    }
}
