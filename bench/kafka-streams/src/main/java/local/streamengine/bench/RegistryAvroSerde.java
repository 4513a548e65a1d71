package local.streamengine.bench;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericDatumWriter;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.BinaryDecoder;
import org.apache.avro.io.BinaryEncoder;
import org.apache.avro.io.DecoderFactory;
import org.apache.avro.io.EncoderFactory;
import org.apache.kafka.common.errors.SerializationException;
import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serializer;

/**
 * Avro values in Confluent's wire format (byte 0, 4-byte big-endian schema id, Avro binary),
 * as {@link GenericRecord}s of one contract schema.
 *
 * <p>It stands in for Confluent's {@code KafkaAvroSerde}, which is not on Maven Central, and
 * behaves like it with {@code auto.register.schemas=true} and a reader schema: the
 * deserializer resolves each record from its writer schema (fetched once per id) to the
 * contract; the serializer registers the contract under {@code <topic>-value} once and
 * writes every record with that id.
 *
 * <p>One instance is shared by every task of every stream thread, so the reusable Avro
 * decoder, encoder and buffer are kept per thread.
 */
final class RegistryAvroSerde implements Serde<GenericRecord> {
    private static final byte MAGIC_BYTE = 0;
    private static final int HEADER_SIZE = 5;

    private final SchemaRegistryClient registry;
    private final Schema contract;
    private final Map<Integer, GenericDatumReader<GenericRecord>> readersByWriterId = new ConcurrentHashMap<>();
    private final GenericDatumWriter<GenericRecord> writer;
    private final ThreadLocal<BinaryDecoder> decoder = new ThreadLocal<>();
    private final ThreadLocal<Encoding> encoding = ThreadLocal.withInitial(Encoding::new);

    RegistryAvroSerde(SchemaRegistryClient registry, Schema contract) {
        this.registry = registry;
        this.contract = contract;
        this.writer = new GenericDatumWriter<>(contract);
    }

    @Override
    public Serializer<GenericRecord> serializer() {
        return this::serialize;
    }

    @Override
    public Deserializer<GenericRecord> deserializer() {
        return this::deserialize;
    }

    private GenericRecord deserialize(String topic, byte[] data) {
        if (data == null) {
            return null;
        }
        if (data.length < HEADER_SIZE || data[0] != MAGIC_BYTE) {
            throw new SerializationException("topic " + topic + ": a " + data.length
                    + "-byte value is not in the schema registry's wire format (magic byte 0, 4-byte schema id)");
        }
        int writerId = ByteBuffer.wrap(data, 1, 4).getInt();
        GenericDatumReader<GenericRecord> reader = readersByWriterId.computeIfAbsent(
                writerId, id -> new GenericDatumReader<>(registry.schemaById(id), contract));
        BinaryDecoder in = DecoderFactory.get()
                .binaryDecoder(data, HEADER_SIZE, data.length - HEADER_SIZE, decoder.get());
        decoder.set(in);
        GenericRecord record;
        boolean trailingBytes;
        try {
            record = reader.read(null, in);
            trailingBytes = !in.isEnd();
        } catch (IOException | RuntimeException e) {
            // Malformed input surfaces as EOFException, AvroRuntimeException or, for some
            // corrupt lengths, an index or size exception from the decoder.
            throw new SerializationException("topic " + topic + ": cannot decode an Avro record of schema id "
                    + writerId + " as " + contract.getFullName() + ": " + e, e);
        }
        if (trailingBytes) {
            throw new SerializationException(
                    "topic " + topic + ": trailing bytes after an Avro record of schema id " + writerId);
        }
        return record;
    }

    private byte[] serialize(String topic, GenericRecord record) {
        if (record == null) {
            return null;
        }
        int id = registry.register(topic + "-value", contract);
        Encoding out = encoding.get();
        out.buffer.reset();
        out.buffer.write(MAGIC_BYTE);
        out.buffer.write(id >>> 24);
        out.buffer.write(id >>> 16);
        out.buffer.write(id >>> 8);
        out.buffer.write(id);
        out.encoder = EncoderFactory.get().binaryEncoder(out.buffer, out.encoder);
        try {
            writer.write(record, out.encoder);
            out.encoder.flush();
        } catch (IOException | RuntimeException e) {
            // A record that does not fit the contract fails with NullPointerException,
            // ClassCastException or AvroRuntimeException, depending on the field.
            throw new SerializationException("topic " + topic + ": cannot encode a record as "
                    + contract.getFullName() + ": " + e, e);
        }
        return out.buffer.toByteArray();
    }

    /** A thread's output buffer and the encoder that writes into it, both reused. */
    private static final class Encoding {
        final ByteArrayOutputStream buffer = new ByteArrayOutputStream(1024);
        BinaryEncoder encoder;
    }
}
