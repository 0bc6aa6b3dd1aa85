//! Typed indexes into the compiled table, so an index into one slice can never be used on
//! another: `RegionIdx` → `RoutingTable::regions`, `SrIdx` → `Service::regions` (a service's
//! regions), `BackendIdx` → `Service::backends`, `RouteIdx` → `RoutingTable::routes`.

use std::ops::{Index, IndexMut};

use super::table::{Backend, Region, Route, ServiceRegion};

macro_rules! index_type {
    ($(#[$doc:meta])* $name:ident => $target:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub usize);

        impl $name {
            /// Every index of a slice of `len` items, in order.
            pub fn all(len: usize) -> impl Iterator<Item = $name> {
                (0..len).map($name)
            }
        }

        impl Index<$name> for [$target] {
            type Output = $target;
            fn index(&self, i: $name) -> &$target {
                &self[i.0]
            }
        }

        impl IndexMut<$name> for [$target] {
            fn index_mut(&mut self, i: $name) -> &mut $target {
                &mut self[i.0]
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

index_type!(
    /// Index into `RoutingTable::regions` (every configured region).
    RegionIdx => Region
);
index_type!(
    /// Index into `Service::regions` (the regions one service has backends in).
    SrIdx => ServiceRegion
);
index_type!(
    /// Index into `Service::backends`.
    BackendIdx => Backend
);
index_type!(
    /// Index into `RoutingTable::routes`.
    RouteIdx => Route
);
