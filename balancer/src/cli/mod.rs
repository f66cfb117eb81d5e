pub mod attach;
pub mod inspect;
