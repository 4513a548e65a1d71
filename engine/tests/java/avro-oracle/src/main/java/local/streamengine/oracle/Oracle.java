package local.streamengine.oracle;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.JsonNodeFactory;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.BufferedReader;
import java.io.ByteArrayInputStream;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.HexFormat;
import java.util.Map;
import java.util.TreeMap;
import org.apache.avro.Schema;
import org.apache.avro.SchemaCompatibility;
import org.apache.avro.SchemaCompatibility.Incompatibility;
import org.apache.avro.SchemaCompatibility.SchemaPairCompatibility;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericEnumSymbol;
import org.apache.avro.generic.GenericFixed;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.BinaryDecoder;
import org.apache.avro.io.DecoderFactory;

/**
 * Answers, one JSON line per request line on stdin, what Apache Avro for Java says about a
 * (reader, writer) schema pair:
 *
 * <pre>
 * request:  {"reader": "&lt;schema&gt;", "writer": "&lt;schema&gt;", "data": ["&lt;hex datum&gt;", ...]}
 * answer:   {"compatible": true|false, "incompatibilities": ["TYPE at /location: message", ...],
 *            "decoded": [{"value": ...} | {"error": "..."}, ...]}
 *       or  {"parse_error": "..."}  when Java refuses a schema,
 *       or  {"check_error": "..."}  when the compatibility check itself throws.
 * </pre>
 *
 * The verdict is {@code SchemaCompatibility.checkReaderWriterCompatibility}, the call
 * Confluent's registry makes for Avro. Data is decoded only for compatible pairs, with
 * {@code GenericDatumReader(writer, reader)}, and rendered as tagged JSON so that nothing is
 * lost: bytes {"$bytes": hex}, fixed {"$fixed": hex}, enum {"$enum": symbol}, floats and doubles
 * {"$double": hex bits of the double}, a union value
 * {"$branch": reader branch index, "value": ...}, maps with sorted keys.
 */
public final class Oracle {
  private static final JsonNodeFactory NODES = JsonNodeFactory.instance;
  private static final HexFormat HEX = HexFormat.of();

  private Oracle() {}

  public static void main(String[] args) throws Exception {
    ObjectMapper mapper = new ObjectMapper();
    BufferedReader in =
        new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
    PrintStream out = new PrintStream(System.out, false, StandardCharsets.UTF_8);
    String line;
    while ((line = in.readLine()) != null) {
      if (line.isBlank()) {
        continue;
      }
      JsonNode request = mapper.readTree(line);
      out.println(mapper.writeValueAsString(answer(request)));
      out.flush();
    }
  }

  private static ObjectNode answer(JsonNode request) {
    ObjectNode answer = NODES.objectNode();
    Schema reader;
    Schema writer;
    try {
      // One parser per schema: reader and writer usually define the same names.
      reader = new Schema.Parser().parse(request.get("reader").asText());
      writer = new Schema.Parser().parse(request.get("writer").asText());
    } catch (RuntimeException e) {
      answer.put("parse_error", String.valueOf(e.getMessage()));
      return answer;
    }
    SchemaPairCompatibility result;
    try {
      result = SchemaCompatibility.checkReaderWriterCompatibility(reader, writer);
    } catch (RuntimeException e) {
      answer.put("check_error", e.getClass().getSimpleName() + ": " + e.getMessage());
      return answer;
    }
    boolean compatible =
        result.getType() == SchemaCompatibility.SchemaCompatibilityType.COMPATIBLE;
    answer.put("compatible", compatible);
    ArrayNode incompatibilities = answer.putArray("incompatibilities");
    for (Incompatibility i : result.getResult().getIncompatibilities()) {
      incompatibilities.add(i.getType() + " at " + i.getLocation() + ": " + i.getMessage());
    }
    ArrayNode decoded = answer.putArray("decoded");
    JsonNode data = request.get("data");
    if (compatible && data != null) {
      GenericDatumReader<Object> datumReader = new GenericDatumReader<>(writer, reader);
      for (JsonNode hex : data) {
        ObjectNode one = decoded.addObject();
        try {
          byte[] bytes = HEX.parseHex(hex.asText());
          // Unbuffered over a stream, not over the array: Avro 1.12 checks a collection's
          // claimed length against the bytes it knows remain using the reader's item
          // width, so an array of floats read as doubles fails on a decoder that knows.
          ByteArrayInputStream input = new ByteArrayInputStream(bytes);
          BinaryDecoder decoder = DecoderFactory.get().directBinaryDecoder(input, null);
          Object datum = datumReader.read(null, decoder);
          if (input.available() != 0) {
            throw new IllegalStateException("bytes left over after the datum");
          }
          one.set("value", toJson(reader, datum));
        } catch (Exception e) {
          one.put("error", e.getClass().getSimpleName() + ": " + e.getMessage());
        }
      }
    }
    return answer;
  }

  /**
   * A float or double as the bits of the double it widens to: exact, where JDK 17's
   * Double.toString can print a decimal that parses back to a different double.
   */
  private static JsonNode bits(double d) {
    return NODES.objectNode().put("$double", String.format("%016x", Double.doubleToRawLongBits(d)));
  }

  private static JsonNode toJson(Schema schema, Object datum) {
    switch (schema.getType()) {
      case NULL:
        return NODES.nullNode();
      case BOOLEAN:
        return NODES.booleanNode((Boolean) datum);
      case INT:
        return NODES.numberNode((Integer) datum);
      case LONG:
        return NODES.numberNode((Long) datum);
      case FLOAT:
        return bits((double) (Float) datum);
      case DOUBLE:
        return bits((Double) datum);
      case STRING:
        return NODES.textNode(datum.toString());
      case BYTES: {
        ByteBuffer buffer = ((ByteBuffer) datum).duplicate();
        byte[] bytes = new byte[buffer.remaining()];
        buffer.get(bytes);
        return NODES.objectNode().put("$bytes", HEX.formatHex(bytes));
      }
      case FIXED:
        return NODES.objectNode().put("$fixed", HEX.formatHex(((GenericFixed) datum).bytes()));
      case ENUM:
        return NODES.objectNode().put("$enum", ((GenericEnumSymbol<?>) datum).toString());
      case ARRAY: {
        ArrayNode array = NODES.arrayNode();
        for (Object item : (Iterable<?>) datum) {
          array.add(toJson(schema.getElementType(), item));
        }
        return array;
      }
      case MAP: {
        Map<String, JsonNode> sorted = new TreeMap<>();
        for (Map.Entry<?, ?> e : ((Map<?, ?>) datum).entrySet()) {
          sorted.put(e.getKey().toString(), toJson(schema.getValueType(), e.getValue()));
        }
        ObjectNode map = NODES.objectNode();
        sorted.forEach(map::set);
        return map;
      }
      case RECORD: {
        GenericRecord record = (GenericRecord) datum;
        ObjectNode object = NODES.objectNode();
        for (Schema.Field field : schema.getFields()) {
          object.set(field.name(), toJson(field.schema(), record.get(field.pos())));
        }
        return object;
      }
      case UNION: {
        int branch = GenericData.get().resolveUnion(schema, datum);
        ObjectNode union = NODES.objectNode();
        union.put("$branch", branch);
        union.set("value", toJson(schema.getTypes().get(branch), datum));
        return union;
      }
      default:
        throw new IllegalArgumentException("unknown schema type " + schema.getType());
    }
  }
}
