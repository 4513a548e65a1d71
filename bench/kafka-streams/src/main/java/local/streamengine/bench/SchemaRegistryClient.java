package local.streamengine.bench;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.net.URI;
import java.net.URLEncoder;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import org.apache.avro.Schema;
import org.apache.avro.SchemaParseException;
import org.apache.kafka.common.errors.SerializationException;

/**
 * The two calls of Confluent's schema registry REST API the serde needs: fetch a writer
 * schema by id, and register a schema under a subject. Both answers are cached, so the
 * registry sees one request per schema id and one per subject for the life of the process.
 */
final class SchemaRegistryClient {
    private static final String CONTENT_TYPE = "application/vnd.schemaregistry.v1+json";
    private static final Duration TIMEOUT = Duration.ofSeconds(30);

    private final String baseUrl;
    private final HttpClient http;
    private final ObjectMapper json = new ObjectMapper();
    private final Map<Integer, Schema> schemasById = new ConcurrentHashMap<>();
    private final Map<String, Integer> idsBySubject = new ConcurrentHashMap<>();

    SchemaRegistryClient(String baseUrl) {
        this.baseUrl = baseUrl.endsWith("/") ? baseUrl.substring(0, baseUrl.length() - 1) : baseUrl;
        this.http = HttpClient.newBuilder().connectTimeout(TIMEOUT).build();
    }

    /** The schema registered under {@code id}: {@code GET /schemas/ids/{id}}. */
    Schema schemaById(int id) {
        return schemasById.computeIfAbsent(id, this::fetchSchema);
    }

    /**
     * Registers {@code schema} under {@code subject} (or finds it there already) and returns
     * its id: {@code POST /subjects/{subject}/versions}.
     */
    int register(String subject, Schema schema) {
        return idsBySubject.computeIfAbsent(subject, s -> registerSchema(s, schema));
    }

    private Schema fetchSchema(int id) {
        HttpRequest request = HttpRequest.newBuilder(URI.create(baseUrl + "/schemas/ids/" + id))
                .timeout(TIMEOUT)
                .header("Accept", CONTENT_TYPE)
                .GET()
                .build();
        JsonNode schema = send(request, "fetching schema id " + id).get("schema");
        if (schema == null || !schema.isTextual()) {
            throw new SerializationException(
                    "schema registry " + baseUrl + ": the answer for schema id " + id + " has no \"schema\" string");
        }
        try {
            return new Schema.Parser().parse(schema.asText());
        } catch (SchemaParseException e) {
            throw new SerializationException(
                    "schema registry " + baseUrl + ": schema id " + id + " is not an Avro schema: " + e.getMessage(), e);
        }
    }

    private int registerSchema(String subject, Schema schema) {
        String body;
        try {
            body = json.writeValueAsString(Map.of("schema", schema.toString()));
        } catch (IOException e) {
            throw new SerializationException("cannot encode the schema for subject " + subject, e);
        }
        String path = "/subjects/" + URLEncoder.encode(subject, StandardCharsets.UTF_8) + "/versions";
        HttpRequest request = HttpRequest.newBuilder(URI.create(baseUrl + path))
                .timeout(TIMEOUT)
                .header("Content-Type", CONTENT_TYPE)
                .header("Accept", CONTENT_TYPE)
                .POST(HttpRequest.BodyPublishers.ofString(body))
                .build();
        JsonNode id = send(request, "registering subject " + subject).get("id");
        if (id == null || !id.canConvertToInt()) {
            throw new SerializationException(
                    "schema registry " + baseUrl + ": the answer for subject " + subject + " has no integer \"id\"");
        }
        return id.intValue();
    }

    private JsonNode send(HttpRequest request, String what) {
        HttpResponse<String> response;
        try {
            response = http.send(request, HttpResponse.BodyHandlers.ofString());
        } catch (IOException e) {
            throw new SerializationException("schema registry " + baseUrl + " unreachable while " + what, e);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new SerializationException("interrupted while " + what, e);
        }
        if (response.statusCode() / 100 != 2) {
            throw new SerializationException("schema registry " + baseUrl + " answered HTTP " + response.statusCode()
                    + " while " + what + ": " + response.body());
        }
        try {
            return json.readTree(response.body());
        } catch (IOException e) {
            throw new SerializationException(
                    "schema registry " + baseUrl + " answered with invalid JSON while " + what, e);
        }
    }
}
