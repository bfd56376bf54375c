//! What a JMESPath expression reads of a document, and documents parsed
//! only as far as that: pure.
//!
//! Parsing a JSON value into the `jmespath` crate's value tree allocates for
//! every key, string and node (a `BTreeMap` per object, an `Rc` per value),
//! and was the largest cost of a JMES filter: most filters read one or two
//! fields of a document that holds many. [`Reads::of`] works out from the
//! compiled expression which fields it can reach; [`JmesDocument::read`]
//! builds the tree for those alone and only checks the syntax of the rest.
//!
//! The guarantee (tested against the full tree below): evaluating an
//! expression on a document read for a superset of its [`Reads`] gives the
//! same result as on the whole document. Fields of a value are the only
//! thing pruned, and only where the expression reaches the value through
//! field names alone; anything else (`@`, an index, a slice, a projection, a
//! function of the value) reads the value whole.

use std::collections::BTreeMap;
use std::fmt;

use jmespath::ast::Ast;
use jmespath::{Rcvar, Variable};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// What an expression can read of the value it is evaluated on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reads {
    /// The value whole.
    All,
    /// Only these fields of it, each read as far as its own `Reads` says,
    /// if it is an object (a value of another kind is kept whole).
    Fields(BTreeMap<String, Reads>),
}

impl Reads {
    /// Nothing at all (an expression of literals).
    pub fn nothing() -> Self {
        Reads::Fields(BTreeMap::new())
    }

    /// What `ast` reads of the value it is evaluated on.
    ///
    /// Recursive over the tree: callers bound its depth first (filters are
    /// at most [`super::fields::MAX_JMES_DEPTH`] deep).
    pub fn of(ast: &Ast) -> Self {
        match ast {
            Ast::Field { name, .. } => Reads::Fields(BTreeMap::from([(name.clone(), Reads::All)])),
            // `a.b.c | rest`: `rest` reads what it reads of the value at
            // `a.b.c`. Otherwise the right side reads only what the left side
            // yields, which is the same whether the document was pruned or not.
            Ast::Subexpr { lhs, rhs, .. } => match field_path(lhs) {
                Some(path) => path.into_iter().rev().fold(Reads::of(rhs), |inner, name| {
                    Reads::Fields(BTreeMap::from([(name.to_string(), inner)]))
                }),
                None => Reads::of(lhs),
            },
            // The right side of a projection runs on the elements the left
            // side yields; a flatten, an object's values and a negation read
            // what their operand yields.
            Ast::Projection { lhs: node, .. }
            | Ast::Flatten { node, .. }
            | Ast::ObjectValues { node, .. }
            | Ast::Not { node, .. } => Reads::of(node),
            Ast::Comparison { lhs, rhs, .. }
            | Ast::And { lhs, rhs, .. }
            | Ast::Or { lhs, rhs, .. } => Reads::of(lhs).union(Reads::of(rhs)),
            Ast::Condition {
                predicate, then, ..
            } => Reads::of(predicate).union(Reads::of(then)),
            Ast::Function { args: nodes, .. }
            | Ast::MultiList {
                elements: nodes, ..
            } => nodes
                .iter()
                .map(Reads::of)
                .fold(Reads::nothing(), Reads::union),
            Ast::MultiHash { elements, .. } => elements
                .iter()
                .map(|pair| Reads::of(&pair.value))
                .fold(Reads::nothing(), Reads::union),
            // A reference to an expression (`&age` in `sort_by(people, &age)`)
            // reads nothing here: the function applies it to values its other
            // arguments yield.
            Ast::Literal { .. } | Ast::Expref { .. } => Reads::nothing(),
            Ast::Identity { .. } | Ast::Index { .. } | Ast::Slice { .. } => Reads::All,
        }
    }

    /// What either reads.
    pub fn union(self, other: Reads) -> Reads {
        match (self, other) {
            (Reads::All, _) | (_, Reads::All) => Reads::All,
            (Reads::Fields(mut mine), Reads::Fields(theirs)) => {
                for (name, reads) in theirs {
                    let merged = match mine.remove(&name) {
                        Some(held) => held.union(reads),
                        None => reads,
                    };
                    mine.insert(name, merged);
                }
                Reads::Fields(mine)
            }
        }
    }
}

/// `a.b.c` as `["a", "b", "c"]`, when `ast` is nothing but field names.
fn field_path(ast: &Ast) -> Option<Vec<&str>> {
    match ast {
        Ast::Field { name, .. } => Some(vec![name]),
        Ast::Subexpr { lhs, rhs, .. } => {
            let mut path = field_path(lhs)?;
            path.extend(field_path(rhs)?);
            Some(path)
        }
        _ => None,
    }
}

/// A JSON document parsed once for any number of JMESPath searches.
pub struct JmesDocument(pub(super) Rcvar);

impl JmesDocument {
    /// Parses JSON text whole; `None` when it is not JSON.
    pub fn from_json(text: &str) -> Option<Self> {
        Self::read(text, &Reads::All)
    }

    /// Parses JSON text, building values only where `reads` says an
    /// expression can look; the rest is checked as JSON and skipped. `None`
    /// when the text is not JSON.
    pub fn read(text: &str, reads: &Reads) -> Option<Self> {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let value = Pruned(reads).deserialize(&mut deserializer).ok()?;
        deserializer.end().ok()?;
        Some(Self(Rcvar::new(value)))
    }
}

/// Deserialises a value as far as its `Reads` say.
struct Pruned<'r>(&'r Reads);

impl<'de> DeserializeSeed<'de> for Pruned<'_> {
    type Value = Variable;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Variable, D::Error> {
        match self.0 {
            Reads::All => de::Deserialize::deserialize(deserializer),
            Reads::Fields(fields) => deserializer.deserialize_any(FieldsOf(fields)),
        }
    }
}

/// An object reduced to `fields`; anything else whole, as it is (no field of
/// it can be read, but a multi-select still tells null from the rest, and
/// such values are rare where an expression expects an object).
struct FieldsOf<'r>(&'r BTreeMap<String, Reads>);

impl<'de> Visitor<'de> for FieldsOf<'_> {
    type Value = Variable;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Variable, M::Error> {
        let mut object = BTreeMap::new();
        while let Some(wanted) = map.next_key_seed(Wanted(self.0))? {
            match wanted {
                Some((name, reads)) => {
                    let value = map.next_value_seed(Pruned(reads))?;
                    // A repeated name: the last one counts, as in a full parse.
                    object.insert(name.clone(), Rcvar::new(value));
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Variable::Object(object))
    }

    // The rest as `jmespath::Variable`'s own deserialisation builds it.
    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Variable, S::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Rcvar>()? {
            items.push(item);
        }
        Ok(Variable::Array(items))
    }
    fn visit_bool<E>(self, value: bool) -> Result<Variable, E> {
        Ok(Variable::Bool(value))
    }
    fn visit_i64<E>(self, value: i64) -> Result<Variable, E> {
        Ok(Variable::Number(value.into()))
    }
    fn visit_u64<E>(self, value: u64) -> Result<Variable, E> {
        Ok(Variable::Number(value.into()))
    }
    fn visit_f64<E>(self, value: f64) -> Result<Variable, E> {
        Ok(serde_json::Number::from_f64(value).map_or(Variable::Null, Variable::Number))
    }
    fn visit_str<E>(self, value: &str) -> Result<Variable, E> {
        Ok(Variable::String(value.to_string()))
    }
    fn visit_unit<E>(self) -> Result<Variable, E> {
        Ok(Variable::Null)
    }
}

/// Reads an object key and looks it up among the wanted fields, without
/// allocating for it.
struct Wanted<'r>(&'r BTreeMap<String, Reads>);

impl<'de, 'r> DeserializeSeed<'de> for Wanted<'r> {
    type Value = Option<(&'r String, &'r Reads)>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de, 'r> Visitor<'de> for Wanted<'r> {
    type Value = Option<(&'r String, &'r Reads)>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("an object key")
    }

    // Keys with escapes arrive unescaped here too (serde_json hands them
    // over from its scratch buffer).
    fn visit_str<E>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.0.get_key_value(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reads(expression: &str) -> Reads {
        Reads::of(jmespath::compile(expression).unwrap().as_ast())
    }

    fn fields(entries: &[(&str, Reads)]) -> Reads {
        Reads::Fields(
            entries
                .iter()
                .map(|(name, reads)| (name.to_string(), reads.clone()))
                .collect(),
        )
    }

    #[test]
    fn a_filter_on_fields_reads_those_fields_alone() {
        assert_eq!(reads("kind == 'order'"), fields(&[("kind", Reads::All)]));
        assert_eq!(
            reads("a.b.c > `1` && d"),
            fields(&[
                ("a", fields(&[("b", fields(&[("c", Reads::All)]))])),
                ("d", Reads::All)
            ])
        );
        // Reading `a` whole covers reading `a.b`.
        assert_eq!(reads("a.b || a"), fields(&[("a", Reads::All)]));
        assert_eq!(reads("`true`"), Reads::nothing());
    }

    #[test]
    fn anything_but_field_names_reads_the_value_whole() {
        assert_eq!(reads("length(@) > `2`"), Reads::All);
        assert_eq!(reads("[0]"), Reads::All);
        assert_eq!(reads("a[0].b"), fields(&[("a", Reads::All)]));
        assert_eq!(reads("a[?x > `1`].y"), fields(&[("a", Reads::All)]));
        assert_eq!(reads("a.*.b"), fields(&[("a", Reads::All)]));
        assert_eq!(
            reads("sort_by(people, &age)[0].name"),
            fields(&[("people", Reads::All)])
        );
        assert_eq!(
            reads("keys(a.b)"),
            fields(&[("a", fields(&[("b", Reads::All)]))])
        );
    }

    const DOCUMENTS: &[&str] = &[
        r#"{"kind":"order","amount":12,"id":1,"pad":"xxxxxxxx","tags":["a","b"]}"#,
        r#"{"kind":"refund","amount":3.5,"a":{"b":{"c":2},"x":[1,2,{"b":1}]},"d":true}"#,
        r#"{"a":{"b":[{"c":1},{"c":5}]},"people":[{"name":"x","age":30},{"name":"y","age":20}]}"#,
        r#"{"a":[{"x":2,"y":"p"},{"x":0,"y":"q"}],"d":null,"kind":"order","kind":"refund"}"#,
        r#"{"k\u0069nd":"order","a":"not an object","amount":"12"}"#,
        r#"{"a":{"b":{}},"d":"","amount":-1,"nested":{"deep":{"deeper":[[1],[2,[3]]]}}}"#,
        r#"[{"kind":"order"},1,"x"]"#,
        r#""just a string""#,
        "42",
        "null",
        "{}",
        "[]",
        "true",
        "-1.5e3",
        r#"{"a":null,"d":[1,{"b":2}],"kind":{"nested":"order"},"amount":1e300}"#,
        r#"{"a":{"b":null},"people":"nobody"}"#,
    ];

    const EXPRESSIONS: &[&str] = &[
        "kind == 'order'",
        "amount > `10`",
        "a.b.c",
        "a.b.c > `1` && d",
        "a.b || a",
        "a.b[*].c",
        "a[0].b",
        "a[?x > `1`].y",
        "a.*.b",
        "a.x[2].b",
        "sort_by(people, &age)[0].name",
        "people[?age > `25`] | [0].name",
        "keys(a.b)",
        "length(@)",
        "@",
        "[0].kind",
        "[*].kind",
        "{k: kind, n: amount}",
        "[kind, amount, missing]",
        "!d",
        "not_null(missing, kind)",
        "type(a)",
        "to_string(a.b)",
        "contains(tags, 'a')",
        "nested.deep.deeper[]",
        "nested.deep.deeper[][]",
        "a.b.c.d.e",
        "`{\"x\": 1}`.x",
        "`true`",
        "kind == 'order' || amount > `10`",
        "a.b | c",
        "a | b.c",
        "values(a)[0]",
        "max_by(a, &x).y",
        "a.{b: b, x: x}",
        "a.[b, x]",
        "d.b",
        "kind.nested",
        "a.b.{c: c}",
    ];

    #[test]
    fn a_document_read_for_an_expression_gives_what_the_whole_one_gives() {
        for expression in EXPRESSIONS {
            let compiled = jmespath::compile(expression).unwrap();
            let reads = Reads::of(compiled.as_ast());
            for text in DOCUMENTS {
                let whole = JmesDocument::from_json(text).unwrap();
                let pruned = JmesDocument::read(text, &reads).unwrap();
                let search = |document: &JmesDocument| {
                    let mut context =
                        jmespath::Context::new(compiled.as_str(), &jmespath::DEFAULT_RUNTIME);
                    jmespath::interpret(&document.0, compiled.as_ast(), &mut context)
                        .map_err(|e| e.to_string())
                };
                assert_eq!(
                    search(&pruned),
                    search(&whole),
                    "{expression} on {text}, reading {reads:?}"
                );
            }
        }
    }

    #[test]
    fn reads_of_several_expressions_serve_each_of_them() {
        let union = EXPRESSIONS
            .iter()
            .take(4)
            .map(|e| reads(e))
            .fold(Reads::nothing(), Reads::union);
        assert_eq!(
            union,
            fields(&[
                ("kind", Reads::All),
                ("amount", Reads::All),
                ("a", fields(&[("b", fields(&[("c", Reads::All)]))])),
                ("d", Reads::All),
            ])
        );
    }

    #[test]
    fn text_that_is_not_json_is_refused_however_little_is_read() {
        let kind = reads("kind");
        for text in [
            r#"{"kind":"order","pad":"unterminated}"#,
            r#"{"kind":"order","pad":[1,2}"#,
            r#"{"kind":"order"} trailing"#,
            r#"{"kind":"order","pad":"bad \q escape"}"#,
            "",
            "not json",
        ] {
            assert!(JmesDocument::read(text, &kind).is_none(), "{text}");
            assert!(JmesDocument::from_json(text).is_none(), "{text}");
        }
    }
}
