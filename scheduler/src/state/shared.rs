//! [`Shared`]: a value that copies of a [`super::State`] share until one of them changes it.
//!
//! Why: the leader plans each reconcile round on a copy of the applied state (planning under
//! the state machine's lock would stall every commit for as long as the plan takes). With
//! 100,000 allocations and 10,000 nodes a deep copy took 50-400 ms under the read lock, and as
//! much again to free, in every round that had work (docs/benchmarks.md, Rule changes). A
//! `Shared` map is copied by taking a reference; the first change made through a shared one
//! (by `apply`, on the state machine's own state, while a planner still holds a copy) copies
//! the map then, once, and later changes are free again. With no commit during the plan, as in
//! a migration's replacement round, the copy costs nothing at all.
//!
//! Reads go through `Deref`; every `&mut` access goes through `DerefMut`, which is
//! [`Arc::make_mut`]: the value is copied first if another state still shares it, so a copy
//! never sees a change made after it was taken. Equality, order of serialization and the
//! serialized form are those of the inner value, so the replicated state (invariant I3) and its
//! snapshots are unchanged.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Copy-on-write: cloning shares the value; changing it through a shared handle copies it.
#[derive(Default, PartialEq, Eq)]
pub struct Shared<T>(Arc<T>);

impl<T> Shared<T> {
    pub fn new(value: T) -> Self {
        Shared(Arc::new(value))
    }

    /// Whether another handle shares this value (a change through this one would copy it).
    pub fn is_shared(&self) -> bool {
        Arc::strong_count(&self.0) > 1
    }

    /// Stops sharing: copies the value now if another handle shares it, so that no change
    /// made through the others later has to.
    pub fn detach(&mut self)
    where
        T: Clone,
    {
        if self.is_shared() {
            self.0 = Arc::new(T::clone(&self.0));
        }
    }
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Shared(Arc::clone(&self.0))
    }
}

impl<T> From<T> for Shared<T> {
    fn from(value: T) -> Self {
        Shared::new(value)
    }
}

impl<A, T: FromIterator<A>> FromIterator<A> for Shared<T> {
    fn from_iter<I: IntoIterator<Item = A>>(items: I) -> Self {
        Shared::new(items.into_iter().collect())
    }
}

impl<T> Deref for Shared<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: Clone> DerefMut for Shared<T> {
    fn deref_mut(&mut self) -> &mut T {
        Arc::make_mut(&mut self.0)
    }
}

impl<'a, T> IntoIterator for &'a Shared<T>
where
    &'a T: IntoIterator,
{
    type Item = <&'a T as IntoIterator>::Item;
    type IntoIter = <&'a T as IntoIterator>::IntoIter;
    fn into_iter(self) -> Self::IntoIter {
        self.0.as_ref().into_iter()
    }
}

impl<T: fmt::Debug> fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<T: Serialize> Serialize for Shared<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Shared<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Shared::new)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::Shared;

    #[test]
    fn a_copy_shares_until_either_side_changes_and_never_sees_the_change() {
        let mut original: Shared<BTreeMap<String, u32>> = Shared::default();
        original.insert("a".into(), 1);
        assert!(!original.is_shared());
        let copy = original.clone();
        assert!(original.is_shared() && copy.is_shared());
        assert!(std::ptr::eq(&*original, &*copy), "a copy takes a reference");
        original.insert("b".into(), 2);
        assert!(!original.is_shared(), "the change copied the map first");
        assert_eq!(copy.len(), 1, "the copy does not see the change");
        assert_eq!(original.len(), 2);
        let mut detached = copy.clone();
        detached.detach();
        assert!(!detached.is_shared() && *detached == *copy);
        drop(copy);
        let before: *const BTreeMap<String, u32> = &*original;
        original.insert("c".into(), 3);
        assert!(
            std::ptr::eq(before, &*original),
            "unshared: changed in place"
        );
    }

    #[test]
    fn equality_and_json_are_those_of_the_value() {
        let map: BTreeMap<String, u32> = [("x".to_string(), 7)].into();
        let shared = Shared::new(map.clone());
        assert_eq!(
            serde_json::to_string(&shared).unwrap(),
            serde_json::to_string(&map).unwrap()
        );
        let back: Shared<BTreeMap<String, u32>> =
            serde_json::from_str(&serde_json::to_string(&map).unwrap()).unwrap();
        assert!(back == shared);
        let iterated: Vec<_> = (&shared).into_iter().collect();
        assert_eq!(iterated, map.iter().collect::<Vec<_>>());
    }
}
