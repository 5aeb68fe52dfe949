//! OTLP protobuf encoding of spans. (Placeholder being replaced.)
