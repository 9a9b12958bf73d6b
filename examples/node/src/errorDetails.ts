// The google.rpc error model as a TypeScript caller reads it: the server puts a serialized
// google.rpc.Status in the "grpc-status-details-bin" trailer; its details are Any messages
// (ErrorInfo, RequestInfo, BadRequest, ResourceInfo, PreconditionFailure, RetryInfo).
import type { Metadata, ServiceError } from "@grpc/grpc-js";
import { getProtoPath, loadSync } from "google-proto-files";
import type protobuf from "protobufjs";

const root: protobuf.Root = loadSync(getProtoPath("rpc", "error_details.proto"));
root.loadSync(getProtoPath("rpc", "status.proto"));
const Status = root.lookupType("google.rpc.Status");

export interface FieldViolation {
  field: string;
  description: string;
  reason?: string;
}

export interface ErrorDetails {
  code: number;
  message: string;
  requestIdTrailer?: string;
  errorInfo?: { reason: string; domain: string; metadata: Record<string, string> };
  requestInfo?: { requestId: string };
  badRequest?: { fieldViolations: FieldViolation[] };
  resourceInfo?: { resourceType: string; resourceName: string; description: string };
  preconditionFailure?: { violations: { type: string; subject: string; description: string }[] };
  retryInfo?: { retryDelay: { seconds: string; nanos: number } };
}

interface AnyMessage {
  type_url: string;
  value: Uint8Array;
}

function first(metadata: Metadata, key: string): string | Buffer | undefined {
  return metadata.get(key)[0];
}

/** The details of a failed call, decoded from its trailers. */
export function errorDetails(error: ServiceError): ErrorDetails {
  const raw = first(error.metadata, "grpc-status-details-bin");
  if (!(raw instanceof Buffer)) {
    throw new Error(`${error.code} ${error.details}: no grpc-status-details-bin trailer`);
  }
  const status = Status.toObject(Status.decode(raw), { longs: String }) as {
    code: number;
    message: string;
    details?: AnyMessage[];
  };
  const out: ErrorDetails = { code: status.code, message: status.message };
  const requestId = first(error.metadata, "x-request-id");
  if (typeof requestId === "string") out.requestIdTrailer = requestId;
  for (const detail of status.details ?? []) {
    const typeName = detail.type_url.split("/").pop() ?? "";
    const type = root.lookupType(typeName);
    const value = type.toObject(type.decode(detail.value), { longs: String, defaults: true });
    const key = typeName.replace("google.rpc.", "");
    const field = key.charAt(0).toLowerCase() + key.slice(1);
    (out as unknown as Record<string, unknown>)[field] = value;
  }
  return out;
}
