//! NIfTI I/O, preprocessing and phantoms.
