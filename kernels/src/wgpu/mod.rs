//! Placeholder until the wgpu backend lands.
