//! `#[aggregate]`: an inherent `impl` block of apply functions becomes an `Aggregate` impl
//! (type tag → apply dispatch) plus one `EventOf<Self>` marker impl per event.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::parse::Parser;
use syn::spanned::Spanned;
use syn::{FnArg, Ident, ImplItem, ItemImpl, LitStr, Path, ReturnType, Type};

use crate::attrs::Errors;

/// `#[aggregate(name = "...", crate = path)]`.
#[derive(Default)]
struct Args {
    name: Option<LitStr>,
    krate: Option<Path>,
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
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("name") {
            let lit: LitStr = meta.value()?.parse()?;
            let len = lit.value().len();
            if len == 0 || len > 255 {
                return Err(syn::Error::new_spanned(
                    &lit,
                    "`#[aggregate(name = ...)]` must be 1 to 255 bytes",
                ));
            }
            if out.name.replace(lit).is_some() {
                return Err(meta.error("`name` is given twice"));
            }
            Ok(())
        } else if meta.path.is_ident("crate") {
            let path: Path = meta.value()?.parse()?;
            if out.krate.replace(path).is_some() {
                return Err(meta.error("`crate` is given twice"));
            }
            Ok(())
        } else {
            let found = meta.path.get_ident().map_or_else(|| "?".to_owned(), ToString::to_string);
            Err(meta.error(format!("unknown `aggregate` argument `{found}`; expected `name` or `crate`")))
        }
    });
    if let Err(e) = parser.parse2(args) {
        errors.push(e);
    }
    out
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
                continue;
            }
            _ => {
                errors.push(shape_error());
                continue;
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
                    continue;
                }
            },
            _ => {
                errors.push(shape_error());
                continue;
            }
        };
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

                fn apply_recorded(
                    &mut self,
                    event: &#private::RecordedEvent<'_>,
                ) -> ::core::result::Result<(), #private::Error> {
                    #(#arms)*
                    ::core::result::Result::Err(#private::unknown::<Self>(event))
                }
            }

            #(#event_of_impls)*
        };
    }
}
