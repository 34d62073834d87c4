"""Generated protobuf and gRPC stubs (package recstack.v1). Do not edit."""
