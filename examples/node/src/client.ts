// A TypeScript client of the maira-sae contract, run by CI against a live demo server
// (`make contract`): every RPC, the GenerateSteered stream, and the google.rpc error details of
// every error class the server can be driven to from outside.
//
//   node dist/client.js STATE.json   (written by .ci/contract_server.py)
//
// It loads protos/maira_sae/v1/maira_sae.proto at run time with @grpc/proto-loader: the
// contract as it is, with no generated code to keep in step.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { type ErrorDetails, errorDetails } from "./errorDetails.js";

interface State {
  target: string;
  token: string;
  frontal_png: string;
  default_sae_id: string;
  unlabelled_sae_id: string;
}

type Message = Record<string, any>;
type Unary = (
  request: Message,
  metadata: grpc.Metadata,
  options: grpc.CallOptions,
  callback: (error: grpc.ServiceError | null, response?: Message) => void,
) => grpc.ClientUnaryCall;
interface MairaSaeClient extends grpc.Client {
  Encode: Unary;
  TopFeatures: Unary;
  GetInfo: Unary;
  GetFeature: Unary;
  SearchFeatures: Unary;
  GenerateSteered(
    request: Message,
    metadata: grpc.Metadata,
    options: grpc.CallOptions,
  ): grpc.ClientReadableStream<Message>;
}

const here = path.dirname(fileURLToPath(import.meta.url));
const protoRoot = path.resolve(here, "../../../protos");
const definition = protoLoader.loadSync("maira_sae/v1/maira_sae.proto", {
  includeDirs: [protoRoot],
  keepCase: true, // field names as in the .proto, which error field paths use too
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
const loaded = grpc.loadPackageDefinition(definition) as any;
const ServiceClient = loaded.maira_sae.v1.MairaSaeService as new (
  target: string,
  credentials: grpc.ChannelCredentials,
) => MairaSaeClient;

const state: State = JSON.parse(readFileSync(process.argv[2], "utf8"));
const client = new ServiceClient(state.target, grpc.credentials.createInsecure());
const study = { frontal: { data: readFileSync(state.frontal_png), media_type: "MEDIA_TYPE_PNG" } };

function auth(token: string | null = state.token): grpc.Metadata {
  const metadata = new grpc.Metadata();
  if (token !== null) metadata.set("authorization", `Bearer ${token}`);
  return metadata;
}

function deadline(seconds = 60): grpc.CallOptions {
  return { deadline: Date.now() + seconds * 1000 };
}

function call(method: keyof MairaSaeClient, request: Message, metadata = auth()): Promise<Message> {
  const rpc = (client[method] as Unary).bind(client);
  return new Promise((resolve, reject) => {
    rpc(request, metadata, deadline(), (error, response) =>
      error ? reject(error) : resolve(response as Message),
    );
  });
}

/** The rejection of a call that must fail with `code`, its details decoded. */
async function failure(
  code: grpc.status,
  method: keyof MairaSaeClient,
  request: Message,
  metadata = auth(),
): Promise<ErrorDetails> {
  try {
    await call(method, request, metadata);
  } catch (error) {
    return checked(error as grpc.ServiceError, code);
  }
  throw new Error(`${String(method)} succeeded; expected ${grpc.status[code]}`);
}

/** Every error carries an ErrorInfo (stable reason, our domain) and the request id. */
function checked(error: grpc.ServiceError, code: grpc.status): ErrorDetails {
  assert.equal(error.code, code, `${grpc.status[code]} expected, got ${error.code}: ${error.details}`);
  const details = errorDetails(error);
  assert.equal(details.code, code);
  assert.ok(details.errorInfo, `${grpc.status[code]} without ErrorInfo`);
  assert.match(details.errorInfo.reason, /^[A-Z][A-Z0-9_]+$/);
  assert.equal(details.errorInfo.domain, "maira-sae.v1");
  assert.equal(details.requestInfo?.requestId, details.requestIdTrailer);
  console.log(`${grpc.status[code]}: reason ${details.errorInfo.reason} — ${details.message}`);
  return details;
}

function onlyViolation(details: ErrorDetails) {
  const violations = details.badRequest?.fieldViolations ?? [];
  assert.equal(violations.length, 1, "one BadRequest field violation");
  assert.ok(violations[0].description.length > 0);
  return violations[0];
}

async function everyRpc(): Promise<Message> {
  const info = await call("GetInfo", {});
  assert.equal(info.default_sae_id, state.default_sae_id);
  console.log(`GetInfo: ${info.model.name}, SAEs ${info.saes.map((s: Message) => s.id).join(", ")}`);

  const encoded = await call("Encode", {
    study,
    response: "The heart is normal in size.",
    top_k_per_token: 4,
    token_filter: { kinds: ["TOKEN_KIND_RESPONSE"] },
  });
  assert.ok(encoded.tokens.length > 0);
  assert.ok(encoded.tokens.every((t: Message) => t.token.kind === "TOKEN_KIND_RESPONSE"));
  console.log(`Encode: ${encoded.tokens.length} response tokens of ${encoded.total_tokens}`);

  const top = await call("TopFeatures", { study, k: 5, aggregation: "AGGREGATION_MAX" });
  assert.equal(top.features.length, 5);
  console.log(`TopFeatures: ${top.features.map((f: Message) => f.feature).join(", ")}`);

  const feature = await call("GetFeature", { feature: top.features[0].feature, num_nearest: 3 });
  assert.equal(feature.feature.feature, top.features[0].feature);
  assert.equal(feature.feature.nearest_features.length, 3);
  console.log(`GetFeature: ${feature.feature.feature} ${feature.feature.label ?? "(no label)"}`);

  // Text search for the words of that feature's label (after the demo's "...: " prefix).
  const words = String(feature.feature.label ?? "heart").split(": ").pop();
  const search = await call("SearchFeatures", { query: words, limit: 3 });
  assert.ok(search.matches.length > 0, `a label matches "${words}"`);
  const byActivation = await call("SearchFeatures", { activation_text: "enlarged heart", limit: 3 });
  assert.equal(byActivation.matches.length, 3);
  assert.ok(byActivation.matches.every((m: Message) => m.kind === "MATCH_KIND_ACTIVATION"));
  console.log(`SearchFeatures: ${search.matches.length} text matches, 3 by activation`);

  await generateSteered(top.features[0].feature);
  return info;
}

async function generateSteered(feature: number): Promise<void> {
  const request = {
    study,
    settings: { max_new_tokens: 8, seed: 7 },
    variants: [
      { name: "baseline" },
      {
        name: "steered",
        interventions: [{ feature, mode: "STEERING_MODE_ADD", value: 4.0, scope: "POSITION_SCOPE_ALL" }],
      },
    ],
  };
  const stream = client.GenerateSteered(request, auth(), deadline());
  const tokens = [0, 0];
  const finished: Message[] = [];
  for await (const event of stream as AsyncIterable<Message>) {
    if (event.event === "token") tokens[event.variant_index] += 1;
    else finished[event.variant_index] = event.finished;
  }
  for (const [index, result] of finished.entries()) {
    assert.ok(result, `variant ${index} finished`);
    assert.equal(result.num_tokens, tokens[index]);
    assert.ok(["FINISH_REASON_EOS", "FINISH_REASON_LENGTH"].includes(result.finish_reason));
  }
  assert.equal(finished.length, 2);
  console.log(`GenerateSteered: ${tokens.join(" + ")} tokens streamed, 2 variants finished`);
}

async function everyErrorClass(info: Message): Promise<void> {
  // INVALID_ARGUMENT: a study without its frontal image.
  let details = await failure(grpc.status.INVALID_ARGUMENT, "Encode", { study: {} });
  let violation = onlyViolation(details);
  assert.equal(violation.field, "study.frontal");
  assert.equal(details.errorInfo?.reason, "FIELD_REQUIRED");

  // INVALID_ARGUMENT: an enum number the server does not know; the message names the values.
  details = await failure(grpc.status.INVALID_ARGUMENT, "TopFeatures", { study, aggregation: 9 });
  assert.equal(onlyViolation(details).field, "aggregation");
  assert.equal(details.errorInfo?.reason, "ENUM_VALUE_UNKNOWN");
  assert.match(details.message, /AGGREGATION_MAX/);

  // OUT_OF_RANGE: k past limits.max_top_k; the limit is in ErrorInfo.metadata.
  details = await failure(grpc.status.OUT_OF_RANGE, "TopFeatures", { study, k: 100000 });
  violation = onlyViolation(details);
  assert.equal(violation.field, "k");
  assert.equal(details.errorInfo?.reason, "LIMIT_EXCEEDED");
  assert.deepEqual(details.errorInfo?.metadata, {
    limit: "max_top_k",
    limitValue: String(info.limits.max_top_k),
    value: "100000",
  });
  console.log(`  BadRequest: ${violation.field}: ${violation.description}`);

  // OUT_OF_RANGE: a nested field's path.
  details = await failure(grpc.status.OUT_OF_RANGE, "GetFeature", { feature: 1 << 30 });
  assert.equal(onlyViolation(details).field, "feature");
  assert.equal(details.errorInfo?.reason, "FEATURE_OUT_OF_RANGE");

  // NOT_FOUND: an unknown SAE id, named by a ResourceInfo.
  details = await failure(grpc.status.NOT_FOUND, "GetFeature", { sae_id: "no-such-sae" });
  assert.equal(details.errorInfo?.reason, "SAE_NOT_FOUND");
  assert.deepEqual(
    [details.resourceInfo?.resourceType, details.resourceInfo?.resourceName],
    ["sae", "no-such-sae"],
  );

  // FAILED_PRECONDITION: labelled_only on an SAE without interpretations.
  details = await failure(grpc.status.FAILED_PRECONDITION, "TopFeatures", {
    study,
    sae_id: state.unlabelled_sae_id,
    labelled_only: true,
  });
  assert.equal(details.errorInfo?.reason, "NO_INTERPRETATIONS");
  const [unmet] = details.preconditionFailure?.violations ?? [];
  assert.deepEqual([unmet?.type, unmet?.subject], ["INTERPRETATIONS", `sae/${state.unlabelled_sae_id}`]);

  // UNAUTHENTICATED: no bearer token.
  details = await failure(grpc.status.UNAUTHENTICATED, "GetInfo", {}, auth(null));
  assert.equal(details.errorInfo?.reason, "TOKEN_MISSING");
  details = await failure(grpc.status.UNAUTHENTICATED, "GetInfo", {}, auth("wrong"));
  assert.equal(details.errorInfo?.reason, "TOKEN_INVALID");

  await resourceExhausted();
}

/** The demo server admits one request at a time: a burst of calls overflows its queue. */
async function resourceExhausted(): Promise<void> {
  for (let attempt = 1; attempt <= 5; attempt += 1) {
    const burst = Array.from({ length: 6 }, () => call("TopFeatures", { study, k: 3 }));
    const outcomes = await Promise.allSettled(burst);
    const rejected = outcomes.flatMap((o) => (o.status === "rejected" ? [o.reason] : []));
    if (rejected.length === 0) continue;
    const details = checked(rejected[0] as grpc.ServiceError, grpc.status.RESOURCE_EXHAUSTED);
    assert.equal(details.errorInfo?.reason, "QUEUE_FULL");
    assert.ok(details.retryInfo, "RetryInfo");
    const delay = Number(details.retryInfo.retryDelay.seconds) + details.retryInfo.retryDelay.nanos / 1e9;
    assert.ok(delay > 0);
    console.log(`  RetryInfo: retry after ${delay} s (${rejected.length} of 6 refused)`);
    return;
  }
  throw new Error("no burst of 6 calls overflowed a queue of one");
}

const info = await everyRpc();
await everyErrorClass(info);
client.close();
console.log("contract client: every RPC and every error class checked");
