"""Generated protobuf bindings (do not edit; `make proto` regenerates them from proto/)."""
