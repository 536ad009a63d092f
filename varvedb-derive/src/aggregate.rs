//! `#[aggregate]`: an inherent `impl` block of apply functions becomes an `Aggregate` impl
//! (type tag → apply dispatch) plus one `EventOf<Self>` marker impl per event.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::parse::Parser;
use syn::spanned::Spanned;
use syn::{FnArg, Ident, ImplItem, ItemImpl, LitInt, LitStr, Path, ReturnType, Type};

use crate::attrs::Errors;

/// `#[aggregate(name = "...", snapshot, snapshot_every = N, snapshot_version = N, crate = path)]`.
#[derive(Default)]
struct Args {
    name: Option<LitStr>,
    krate: Option<Path>,
    /// Any `snapshot*` argument: the aggregate has snapshots.
    snapshot: Option<Path>,
    snapshot_every: Option<LitInt>,
    snapshot_version: Option<LitInt>,
}

/// One apply function: `fn name(&mut self, event: &ArchivedE)`.
struct Apply<'a> {
    name: &'a Ident,
    archived: &'a Type,
}

pub(crate) fn expand(args: TokenStream, item: &TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = parse_args(args, &mut errors);
    let item_impl: ItemImpl = match syn::parse2(item.clone()) {
        Ok(i) => i,
        Err(_) => {
            let e = syn::Error::new_spanned(
                item,
                "`#[aggregate]` goes on an inherent `impl` block of apply functions: `#[aggregate] impl Order { fn placed(&mut self, e: &ArchivedOrderPlaced) { .. } }`",
            );
            return quote!(#item).into_iter().chain(e.to_compile_error()).collect();
        }
    };
    let applies = validate(&item_impl, &mut errors);
    if let Err(e) = errors.finish() {
        // Emit the impl block unchanged so the functions still exist for the rest of the code.
        let e = e.to_compile_error();
        return quote!(#item_impl #e);
    }
    generate(&item_impl, &args, &applies)
}

fn parse_args(args: TokenStream, errors: &mut Errors) -> Args {
    let mut out = Args::default();
    // Mistakes are recorded and parsing goes on, so all of them are reported together.
    let mut found: Vec<syn::Error> = Vec::new();
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("name") {
            let lit: LitStr = meta.value()?.parse()?;
            let len = lit.value().len();
            if len == 0 || len > 255 {
                found
                    .push(syn::Error::new_spanned(&lit, "`#[aggregate(name = ...)]` must be 1 to 255 bytes"));
            } else if out.name.replace(lit).is_some() {
                found.push(meta.error("`name` is given twice"));
            }
        } else if meta.path.is_ident("snapshot") {
            if out.snapshot.replace(meta.path.clone()).is_some() {
                found.push(meta.error("`snapshot` is given twice"));
            }
        } else if meta.path.is_ident("snapshot_every") || meta.path.is_ident("snapshot_version") {
            let every = meta.path.is_ident("snapshot_every");
            let what = if every { "snapshot_every" } else { "snapshot_version" };
            let lit: LitInt = meta.value()?.parse()?;
            match lit.base10_parse::<u32>() {
                Ok(0) if every => found.push(syn::Error::new_spanned(
                    &lit,
                    "`snapshot_every` must be at least 1; for snapshots made only by `Stream::snapshot`, write `snapshot`",
                )),
                Ok(_) => {
                    let slot = if every { &mut out.snapshot_every } else { &mut out.snapshot_version };
                    if slot.replace(lit).is_some() {
                        found.push(meta.error(format!("`{what}` is given twice")));
                    }
                }
                Err(_) => found.push(syn::Error::new_spanned(&lit, format!("`{what}` must fit in a u32"))),
            }
        } else if meta.path.is_ident("crate") {
            let path: Path = meta.value()?.parse()?;
            if out.krate.replace(path).is_some() {
                found.push(meta.error("`crate` is given twice"));
            }
        } else {
            let name = meta.path.get_ident().map_or_else(|| "?".to_owned(), ToString::to_string);
            found.push(
                meta.error(format!(
                    "unknown `aggregate` argument `{name}`; expected `name`, `snapshot`, `snapshot_every`, `snapshot_version` or `crate`"
                )),
            );
            if meta.input.peek(syn::Token![=]) {
                let _: syn::Expr = meta.value()?.parse()?;
            }
        }
        Ok(())
    });
    if let Err(e) = parser.parse2(args) {
        errors.push(e);
    }
    for e in found {
        errors.push(e);
    }
    out
}

/// Checks one apply function; returns the archived event type it takes, if its shape is right.
fn validate_fn<'a>(f: &'a syn::ImplItemFn, errors: &mut Errors) -> Option<&'a Type> {
    let sig = &f.sig;
    for attr in &f.attrs {
        if attr.path().is_ident("cfg") || attr.path().is_ident("cfg_attr") {
            errors.push(syn::Error::new_spanned(
                attr,
                "`#[cfg]` on an apply function is not supported: the dispatch would still name it; put the whole `#[aggregate]` block behind the `cfg` instead",
            ));
        }
    }
    if sig.constness.is_some() || sig.asyncness.is_some() || sig.unsafety.is_some() || sig.abi.is_some() {
        errors.push(syn::Error::new_spanned(
            sig.fn_token,
            "apply functions are plain `fn`s (not `const`, `async`, `unsafe` or `extern`)",
        ));
    }
    if !sig.generics.params.is_empty() {
        errors.push(syn::Error::new_spanned(&sig.generics, "apply functions cannot be generic"));
    }
    if let ReturnType::Type(_, ty) = &sig.output {
        let is_unit = matches!(&**ty, Type::Tuple(t) if t.elems.is_empty());
        if !is_unit {
            errors.push(syn::Error::new_spanned(
                ty,
                "apply functions return nothing: an event that happened cannot be refused; validate in a command handler instead",
            ));
        }
    }
    let shape_error = || {
        syn::Error::new_spanned(
            &sig.inputs,
            format!(
                "an apply function takes `&mut self` and one archived event: `fn {}(&mut self, event: &ArchivedMyEvent)`",
                sig.ident
            ),
        )
    };
    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(r))
            if r.reference.is_some() && r.mutability.is_some() && r.colon_token.is_none() => {}
        Some(FnArg::Receiver(r)) => {
            errors.push(syn::Error::new_spanned(r, "apply functions take `&mut self`"));
            return None;
        }
        _ => {
            errors.push(shape_error());
            return None;
        }
    }
    let archived = match (inputs.next(), inputs.next()) {
        (Some(FnArg::Typed(arg)), None) => match &*arg.ty {
            Type::Reference(r) if r.mutability.is_none() => &*r.elem,
            other => {
                errors.push(syn::Error::new_spanned(
                    other,
                    "the event is taken by shared reference to its archived form: `&ArchivedMyEvent`",
                ));
                return None;
            }
        },
        _ => {
            errors.push(shape_error());
            return None;
        }
    };
    Some(archived)
}

fn validate<'a>(item: &'a ItemImpl, errors: &mut Errors) -> Vec<Apply<'a>> {
    if let Some((_, path, _)) = &item.trait_ {
        errors.push(syn::Error::new_spanned(
            path,
            "`#[aggregate]` goes on an inherent `impl` block, not on a trait impl",
        ));
    }
    if !item.generics.params.is_empty() {
        errors.push(syn::Error::new_spanned(&item.generics, "generic aggregates are not supported"));
    }
    let mut applies: Vec<Apply<'a>> = Vec::new();
    for impl_item in &item.items {
        let ImplItem::Fn(f) = impl_item else {
            errors.push(syn::Error::new_spanned(
                impl_item,
                "an `#[aggregate]` block holds only apply functions; move other items to another `impl` block",
            ));
            continue;
        };
        let sig = &f.sig;
        let Some(archived) = validate_fn(f, errors) else { continue };
        let key = quote!(#archived).to_string();
        if let Some(first) = applies.iter().find(|a| {
            let t = a.archived;
            quote!(#t).to_string() == key
        }) {
            errors.push(syn::Error::new_spanned(
                archived,
                format!(
                    "`{key}` is applied twice: by `{}` and by `{}`; one apply function per event",
                    first.name, sig.ident
                ),
            ));
            continue;
        }
        applies.push(Apply { name: &sig.ident, archived });
    }
    if applies.is_empty() && item.items.is_empty() {
        errors.push(syn::Error::new_spanned(
            &item.self_ty,
            "an aggregate needs at least one apply function: `fn placed(&mut self, e: &ArchivedOrderPlaced)`",
        ));
    }
    applies
}

/// The `SNAPSHOTS` constant and the `Snapshotted` marker, when any `snapshot*` argument is
/// given.
fn snapshot_items(
    args: &Args,
    self_ty: &Type,
    private: &TokenStream,
) -> (Option<TokenStream>, Option<TokenStream>) {
    let snapshots = (args.snapshot.is_some()
        || args.snapshot_every.is_some()
        || args.snapshot_version.is_some())
    .then(|| {
        let every = args.snapshot_every.as_ref().map_or(0, |l| l.base10_parse::<u32>().unwrap_or(0));
        let version = args.snapshot_version.as_ref().map_or(0, |l| l.base10_parse::<u32>().unwrap_or(0));
        let codec = quote_spanned!(self_ty.span()=> #private::snapshot_codec::<Self>(#every, #version));
        quote! {
            const SNAPSHOTS: ::core::option::Option<#private::SnapshotCodec<Self>> =
                ::core::option::Option::Some(#codec);
        }
    });
    let snapshotted = snapshots
        .as_ref()
        .map(|_| quote!(#[automatically_derived] impl #private::Snapshotted for #self_ty {}));
    (snapshots, snapshotted)
}

fn generate(item: &ItemImpl, args: &Args, applies: &[Apply<'_>]) -> TokenStream {
    let self_ty = &item.self_ty;
    let krate = args.krate.as_ref().map_or_else(|| quote!(::varvedb), |p| quote!(#p));
    let private = quote!(#krate::__private);
    let kind = args.name.as_ref().map_or_else(
        || match &**self_ty {
            Type::Path(p) => p.path.segments.last().map_or_else(String::new, |s| s.ident.to_string()),
            other => quote!(#other).to_string(),
        },
        LitStr::value,
    );
    let event_of =
        |archived: &Type| quote_spanned!(archived.span()=> <#archived as #private::ArchivedEvent>::Event);
    let infos = applies.iter().map(|a| {
        let e = event_of(a.archived);
        quote!(#private::EventInfo::of::<#e>())
    });
    let arms = applies.iter().enumerate().map(|(i, a)| {
        let (name, archived) = (a.name, a.archived);
        quote! {
            if <Self as #private::Aggregate>::EVENTS[#i].matches(event) {
                let archived = event.access::<#archived>()?;
                Self::#name(self, archived);
                return ::core::result::Result::Ok(());
            }
        }
    });
    // Stored versions read in place come first: an older version that has an apply
    // function of its own goes there, not through another event's upcast chain.
    let upcast_arms = applies.iter().map(|a| {
        let (name, e) = (a.name, event_of(a.archived));
        quote! {
            if let ::core::option::Option::Some(archived) = #private::archived_as::<#e>(event, buf)? {
                Self::#name(self, archived);
                return ::core::result::Result::Ok(());
            }
        }
    });
    let (snapshots, snapshotted) = snapshot_items(args, self_ty, &private);
    let debug_arms = applies.iter().enumerate().map(|(i, a)| {
        let archived = a.archived;
        quote! {
            if <Self as #private::Aggregate>::EVENTS[#i].matches(event) {
                return match event.access::<#archived>() {
                    ::core::result::Result::Ok(archived) => {
                        (&#private::DebugArchived(archived)).fmt_archived(event, f)
                    }
                    ::core::result::Result::Err(_) => #private::debug_bytes(event, f),
                };
            }
        }
    });
    let event_of_impls = applies.iter().map(|a| {
        let e = event_of(a.archived);
        quote!(#[automatically_derived] impl #private::EventOf<#self_ty> for #e {})
    });
    quote! {
        #item

        #[automatically_derived]
        #[allow(clippy::all, clippy::pedantic)]
        const _: () = {
            #[automatically_derived]
            impl #private::Aggregate for #self_ty {
                const KIND: &'static str = #kind;
                const EVENTS: &'static [#private::EventInfo] = &[#(#infos),*];
                #snapshots

                fn apply_recorded(
                    &mut self,
                    event: &#private::RecordedEvent<'_>,
                    buf: &mut #private::UpcastBuffer,
                ) -> ::core::result::Result<(), #private::Error> {
                    #(#arms)*
                    #(#upcast_arms)*
                    ::core::result::Result::Err(
                        #private::no_path(<Self as #private::Aggregate>::EVENTS, event)
                            .unwrap_or_else(|| #private::unknown::<Self>(event)),
                    )
                }

                fn fmt_event(
                    event: &#private::RecordedEvent<'_>,
                    f: &mut #private::core::fmt::Formatter<'_>,
                ) -> #private::core::fmt::Result {
                    #[allow(unused_imports)]
                    use #private::{DebugFallback as _, DebugViaDebug as _};
                    #(#debug_arms)*
                    #private::debug_bytes(event, f)
                }
            }

            #(#event_of_impls)*
            #snapshotted

            // Dispatch is by (type tag, schema version): two events sharing both could never
            // be told apart in the log.
            const _: () = ::core::assert!(
                !#private::has_duplicate_identity(<#self_ty as #private::Aggregate>::EVENTS),
                "two events of this aggregate share a type tag and version (same type name in two modules, or two instantiations of a generic event?); give them distinct `#[event(name = \"...\")]`",
            );
        };
    }
}
