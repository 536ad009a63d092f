//! `#[event(...)]` attributes: parsed into a typed model, every mistake collected.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{Attribute, LitInt, LitStr, Path};

/// Collects several errors so the user sees them all at once.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, e: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }

    pub(crate) fn finish(self) -> Result<(), syn::Error> {
        self.0.map_or(Ok(()), Err)
    }
}

/// What `#[event(...)]` may say.
#[derive(Default)]
pub(crate) struct EventAttrs {
    pub(crate) name: Option<LitStr>,
    pub(crate) version: Option<LitInt>,
    /// `upcast = Old`: the older version this one reads.
    pub(crate) upcast: Option<Path>,
    pub(crate) krate: Option<Path>,
}

impl EventAttrs {
    /// Parses every `#[event(...)]` on the item. `identity` is false for `EventData`, which
    /// has no name or version.
    pub(crate) fn parse(attrs: &[Attribute], identity: bool, errors: &mut Errors) -> Self {
        let mut out = EventAttrs::default();
        for attr in attrs.iter().filter(|a| a.path().is_ident("event")) {
            // Semantic mistakes are recorded and parsing goes on, so all of them are reported
            // together; only malformed syntax stops the attribute.
            let result = attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("crate") {
                    let path: Path = meta.value()?.parse()?;
                    note(errors, set(&mut out.krate, path, &meta.path, "crate"));
                } else if identity && meta.path.is_ident("name") {
                    let lit: LitStr = meta.value()?.parse()?;
                    let len = lit.value().len();
                    if len == 0 || len > 255 {
                        errors.push(syn::Error::new_spanned(&lit, "`#[event(name = ...)]` must be 1 to 255 bytes"));
                    } else {
                        note(errors, set(&mut out.name, lit, &meta.path, "name"));
                    }
                } else if identity && meta.path.is_ident("version") {
                    let lit: LitInt = meta.value()?.parse()?;
                    match lit.base10_parse::<u32>() {
                        Ok(0) => errors.push(syn::Error::new_spanned(&lit, "event versions start at 1")),
                        Ok(_) => note(errors, set(&mut out.version, lit, &meta.path, "version")),
                        Err(_) => errors
                            .push(syn::Error::new_spanned(&lit, "`#[event(version = ...)]` must fit in a u32")),
                    }
                } else if identity && meta.path.is_ident("upcast") {
                    let path: Path = meta.value()?.parse()?;
                    note(errors, set(&mut out.upcast, path, &meta.path, "upcast"));
                } else {
                    let message = if !identity
                        && (meta.path.is_ident("name") || meta.path.is_ident("version") || meta.path.is_ident("upcast"))
                    {
                        "`EventData` types have no name or version: only `#[derive(Event)]` types are stored on their own".to_owned()
                    } else {
                        let expected = if identity { "`name`, `version`, `upcast` or `crate`" } else { "`crate`" };
                        let path = &meta.path;
                        let found = quote!(#path).to_string().replace(' ', "");
                        format!("unknown `event` attribute `{found}`; expected {expected}")
                    };
                    errors.push(meta.error(message));
                    if meta.input.peek(syn::Token![=]) {
                        let _: syn::Expr = meta.value()?.parse()?;
                    }
                }
                Ok(())
            });
            if let Err(e) = result {
                errors.push(e);
            }
        }
        out
    }

    /// Path to the varvedb crate in generated code.
    pub(crate) fn krate(&self) -> TokenStream {
        match &self.krate {
            Some(path) => quote!(#path),
            None => quote!(::varvedb),
        }
    }
}

fn note(errors: &mut Errors, result: syn::Result<()>) {
    if let Err(e) = result {
        errors.push(e);
    }
}

fn set<T>(slot: &mut Option<T>, value: T, path: &Path, what: &str) -> syn::Result<()> {
    if slot.is_some() {
        return Err(syn::Error::new_spanned(path, format!("`{what}` is given twice")));
    }
    *slot = Some(value);
    Ok(())
}
