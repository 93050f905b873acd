//! Generated types, clients and servers for the Agent Studio wire contracts.
//!
//! Used by `sandbox-svc` (server), the `studio` command and, later, `conductor-svc` (clients).
//! The `.proto` sources under `proto/agentstudio/` are the contract other languages code against.

pub mod sandbox {
    pub mod v1 {
        tonic::include_proto!("agentstudio.sandbox.v1");
    }
}

/// Encoded `FileDescriptorSet` of every contract, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/agentstudio_descriptor.bin"));
