//! The exported CUDA driver API entry points, grouped by area.

pub mod copy;
pub mod ctx;
pub mod device;
pub mod graph;
pub mod launch;
pub mod library;
pub mod mem;
pub mod streams;
pub mod unsupported;

pub use copy::*;
pub use ctx::*;
pub use device::*;
pub use graph::*;
pub use launch::*;
pub use library::*;
pub use mem::*;
pub use streams::*;
pub use unsupported::*;
