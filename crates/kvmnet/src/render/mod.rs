//! Human output: tables and text for each command. Pure functions of the model.

pub mod doctor;
pub mod show;
pub mod table;
pub mod topo;
pub mod trace;
