//! Generated types, clients and servers for the Agent Studio wire contracts.
//!
//! Used by `sandbox-svc` and `conductor-svc` (servers, and the conductor as the broker's client)
//! and by the `studio` command.
//! The `.proto` sources under `proto/agentstudio/` are the contract other languages code against.

pub mod conductor {
    pub mod v1 {
        tonic::include_proto!("agentstudio.conductor.v1");
    }
}

pub mod sandbox {
    pub mod v1 {
        tonic::include_proto!("agentstudio.sandbox.v1");
    }
}

/// Encoded `FileDescriptorSet` of every contract, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/agentstudio_descriptor.bin"));
