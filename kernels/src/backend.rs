//! The seam between the model code and the hardware.
