//! Tensor element types (the proto `DType` enum) and the Rust types that carry them.
use half::{bf16, f16};

use super::tables;

/// An element type on the wire. Item sizes come from the proto (`wire/tables.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DType {
    /// IEEE 754 binary16 ([`half::f16`]).
    Float16,
    /// IEEE 754 binary32.
    Float32,
    /// IEEE 754 binary64.
    Float64,
    /// The upper 16 bits of a binary32 ([`half::bf16`]).
    BFloat16,
    /// Unsigned byte.
    Uint8,
    /// 32-bit two's complement.
    Int32,
    /// 64-bit two's complement.
    Int64,
    /// One byte per element, 0 (false) or 1 (true).
    Bool,
    /// Signed byte.
    Int8,
    /// 16-bit two's complement.
    Int16,
    /// 16-bit unsigned.
    Uint16,
    /// 32-bit unsigned.
    Uint32,
    /// 64-bit unsigned.
    Uint64,
}

const ALL: [DType; 13] = [
    DType::Float16,
    DType::Float32,
    DType::Float64,
    DType::BFloat16,
    DType::Uint8,
    DType::Int32,
    DType::Int64,
    DType::Bool,
    DType::Int8,
    DType::Int16,
    DType::Uint16,
    DType::Uint32,
    DType::Uint64,
];

impl DType {
    /// The proto enum value.
    pub fn code(self) -> i32 {
        match self {
            DType::Float16 => 1,
            DType::Float32 => 2,
            DType::Float64 => 3,
            DType::BFloat16 => 4,
            DType::Uint8 => 5,
            DType::Int32 => 6,
            DType::Int64 => 7,
            DType::Bool => 8,
            DType::Int8 => 9,
            DType::Int16 => 10,
            DType::Uint16 => 11,
            DType::Uint32 => 12,
            DType::Uint64 => 13,
        }
    }

    /// The dtype of a proto enum value; `None` for DTYPE_UNSPECIFIED and unknown values.
    pub fn from_code(code: i32) -> Option<DType> {
        ALL.iter().copied().find(|d| d.code() == code)
    }

    /// The dtype named as in the proto (`"FLOAT32"`).
    pub fn from_name(name: &str) -> Option<DType> {
        ALL.iter().copied().find(|d| d.name() == name)
    }

    /// Bytes per element.
    pub fn item_size(self) -> usize {
        // The generated table covers every variant; 1 is never reached.
        tables::item_size(self.code()).unwrap_or(1)
    }

    /// The proto name (`"FLOAT32"`).
    pub fn name(self) -> &'static str {
        tables::dtype_name(self.code()).unwrap_or("DTYPE_UNSPECIFIED")
    }

    /// Every dtype of the protocol.
    pub fn all() -> &'static [DType] {
        &ALL
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A Rust type whose values travel as one protocol dtype, little-endian, with no padding.
///
/// Implemented for `f32`, `f64`, [`half::f16`], [`half::bf16`], `u8`, `i8`, `i16`, `u16`,
/// `i32`, `u32`, `i64`, `u64` and `bool` (BOOL; one byte each, 0 or 1).
pub trait Element: sealed::Sealed + bytemuck::NoUninit + Copy + 'static {
    /// The dtype this type travels as.
    const DTYPE: DType;
}

macro_rules! element {
    ($($t:ty => $d:ident),* $(,)?) => {
        $(impl sealed::Sealed for $t {}
          impl Element for $t { const DTYPE: DType = DType::$d; })*
    };
}

element! {
    f16 => Float16, f32 => Float32, f64 => Float64, bf16 => BFloat16, u8 => Uint8,
    i32 => Int32, i64 => Int64, bool => Bool, i8 => Int8, i16 => Int16, u16 => Uint16,
    u32 => Uint32, u64 => Uint64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_names_and_sizes_round_trip_through_the_generated_table() {
        for &d in DType::all() {
            assert_eq!(DType::from_code(d.code()), Some(d));
            assert_eq!(DType::from_name(d.name()), Some(d));
            assert_eq!(tables::item_size(d.code()), Some(d.item_size()));
        }
        assert_eq!(DType::from_code(0), None);
        assert_eq!(DType::from_code(99), None);
    }

    #[test]
    fn element_sizes_match_the_wire_item_sizes() {
        fn check<T: Element>() {
            assert_eq!(
                std::mem::size_of::<T>(),
                T::DTYPE.item_size(),
                "{}",
                T::DTYPE
            );
        }
        check::<f16>();
        check::<f32>();
        check::<f64>();
        check::<bf16>();
        check::<u8>();
        check::<i8>();
        check::<i16>();
        check::<u16>();
        check::<i32>();
        check::<u32>();
        check::<i64>();
        check::<u64>();
        check::<bool>();
    }
}
