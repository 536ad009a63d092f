//! `#[derive(Event)]` and `#[derive(EventData)]`.
//!
//! rkyv is not told about the user's type directly: a derive cannot add attributes to the
//! item it derives for. Instead we emit a hidden *shadow* type with the same fields and let
//! rkyv's remote derive generate `ArchiveWith<X>` / `SerializeWith` / `DeserializeWith` and the
//! archived type `ArchivedX` for it; `X`'s own `Archive` / `Serialize` / `Deserialize` impls
//! delegate to the shadow. Everything but the `ArchivedX` alias lives in `const _: () = {..}`,
//! so the user's namespace only gains the name they use.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, GenericParam, Generics, Ident, WherePredicate};

use crate::attrs::{Errors, EventAttrs};

/// Which derive is expanding.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `#[derive(Event)]`: a stored event with a name and version.
    Event,
    /// `#[derive(EventData)]`: a type nested inside events.
    Data,
}

/// The typed model of the input.
struct Model<'a> {
    input: &'a DeriveInput,
    attrs: EventAttrs,
    shape: Shape<'a>,
}

pub(crate) enum Shape<'a> {
    Struct(&'a Fields),
    Enum(Vec<(&'a Ident, &'a Fields)>),
}

pub(crate) fn expand(input: &DeriveInput, kind: Kind) -> TokenStream {
    match parse(input, kind) {
        Ok(model) => generate(&model, kind),
        Err(e) => {
            // Keep the rest of the user's code type-checking: with a stub `ArchivedX` alias
            // and no impls, one mistake gives one error, not dozens.
            let vis = &input.vis;
            let archived = format_ident!("Archived{}", input.ident);
            let stub = quote!(#[doc(hidden)] #vis type #archived = (););
            let errors = e.to_compile_error();
            if input.generics.params.is_empty() { quote!(#errors #stub) } else { errors }
        }
    }
}

fn parse(input: &DeriveInput, kind: Kind) -> syn::Result<Model<'_>> {
    let mut errors = Errors::default();
    let attrs = EventAttrs::parse(&input.attrs, kind == Kind::Event, &mut errors);
    if let Some(old) = &attrs.upcast
        && !input.generics.params.is_empty()
    {
        errors.push(syn::Error::new_spanned(
            old,
            "`#[event(upcast = ..)]` is not supported on generic events: give each version a concrete type",
        ));
    }
    let shape = match &input.data {
        Data::Struct(s) => Some(Shape::Struct(&s.fields)),
        Data::Enum(e) => {
            if e.variants.is_empty() {
                errors.push(syn::Error::new_spanned(
                    &input.ident,
                    "an enum with no variants has no values to store; add a variant",
                ));
            }
            for v in &e.variants {
                if let Some((_, d)) = &v.discriminant {
                    errors.push(syn::Error::new_spanned(
                        d,
                        "explicit discriminants are not supported in events",
                    ));
                }
            }
            Some(Shape::Enum(e.variants.iter().map(|v| (&v.ident, &v.fields)).collect()))
        }
        Data::Union(u) => {
            errors.push(syn::Error::new_spanned(
                u.union_token,
                "unions cannot be events: their bytes cannot be validated; use an enum",
            ));
            None
        }
    };
    for field in fields_of(shape.as_ref()) {
        for attr in &field.attrs {
            if attr.path().is_ident("rkyv") || attr.path().is_ident("event") {
                errors.push(syn::Error::new_spanned(
                    attr,
                    "field attributes are not supported on events; the derive handles rkyv itself",
                ));
            }
        }
    }
    for attr in &input.attrs {
        if attr.path().is_ident("rkyv") {
            errors.push(syn::Error::new_spanned(
                attr,
                "`#[rkyv(..)]` is not needed: the derive generates the rkyv impls; remove it",
            ));
        }
    }
    errors.finish()?;
    Ok(Model { input, attrs, shape: shape.expect("unions were reported above") })
}

fn fields_of<'a>(shape: Option<&'a Shape<'a>>) -> Vec<&'a syn::Field> {
    match shape {
        Some(Shape::Struct(f)) => f.iter().collect(),
        Some(Shape::Enum(vs)) => vs.iter().flat_map(|(_, f)| f.iter()).collect(),
        None => Vec::new(),
    }
}

#[expect(clippy::too_many_lines, reason = "one quote! block mirrors the generated code")]
fn generate(m: &Model<'_>, kind: Kind) -> TokenStream {
    let input = m.input;
    let ident = &input.ident;
    let vis = &input.vis;
    let krate = m.attrs.krate();
    let private = quote!(#krate::__private);
    let rkyv = quote!(#private::rkyv);
    let archived = format_ident!("Archived{}", ident);
    let resolver = format_ident!("__Varve{}Resolver", ident);
    let shadow = format_ident!("__VarveShadow{}", ident);
    let generics = &input.generics;
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    let alias_params = alias_params(generics);
    let this = quote!(#ident #ty_generics);
    let shadow_ty = quote!(#shadow #ty_generics);
    let archived_ty = quote!(#archived #ty_generics);

    let shadow_body = match &m.shape {
        Shape::Struct(fields) => {
            let body = strip_field_attrs(fields);
            match fields {
                Fields::Named(_) => quote!(#vis struct #shadow #generics #where_clause #body),
                _ => quote!(#vis struct #shadow #generics #body #where_clause;),
            }
        }
        Shape::Enum(variants) => {
            let vs = variants.iter().map(|(name, fields)| {
                let body = strip_field_attrs(fields);
                quote!(#name #body)
            });
            quote!(#vis enum #shadow #generics #where_clause { #(#vs),* })
        }
    };
    let from_body = match &m.shape {
        Shape::Struct(fields) => {
            let (pattern, construct) = destructure(fields);
            quote!(let #shadow #pattern = shadow; #ident #construct)
        }
        Shape::Enum(variants) => {
            let arms = variants.iter().map(|(name, fields)| {
                let (pattern, construct) = destructure(fields);
                quote!(#shadow::#name #pattern => #ident::#name #construct)
            });
            quote!(match shadow { #(#arms),* })
        }
    };
    // rkyv derives Debug on the archived type only where no bound on a type parameter is needed.
    let archived_debug = generics.type_params().next().is_none().then(|| quote!(#[rkyv(derive(Debug))]));
    // Likewise `Serialize` (varvedb's `serde` feature), which generic types would need bounds for.
    let archived_serde = generics
        .params
        .is_empty()
        .then(|| crate::archived_serde::expand(ident, &archived, &m.shape, &private));

    let schema_where = extend_where(generics, |t| quote!(#t: #private::Schema));
    let fingerprint = fingerprint(&m.shape, &private);

    let serialize_generics = with_param(generics, &quote!(__S: #rkyv::rancor::Fallible + ?Sized));
    let deserialize_generics = with_param(generics, &quote!(__D: #rkyv::rancor::Fallible + ?Sized));
    let serialize_where = extend_where(generics, |_| quote!());
    let archive_where = serialize_where.clone();
    // Generic types state what each field needs, per field: naming the archived type needs
    // `F: Archive`, and whole-type bounds would compete with rkyv's own impls.
    let generic = generics.type_params().next().is_some();
    let field_types = unique_field_types(&m.shape);
    let field_archive: Vec<TokenStream> =
        if generic { field_types.iter().map(|f| quote!(#f: #rkyv::Archive,)).collect() } else { Vec::new() };
    let field_storable: Vec<TokenStream> = if generic {
        field_types
            .iter()
            .map(|f| {
                quote! {
                    #f: #rkyv::Archive + for<'__a> #rkyv::Serialize<#private::Serializer<'__a>>,
                    <#f as #rkyv::Archive>::Archived:
                        #rkyv::Portable + for<'__a> #rkyv::bytecheck::CheckBytes<#private::Validator<'__a>>,
                }
            })
            .collect()
    } else {
        Vec::new()
    };
    let deserialize_where = quote!(#serialize_where #(#field_archive)*);

    let event_impls = (kind == Kind::Event).then(|| {
        let name = m.attrs.name.as_ref().map_or_else(|| ident.to_string(), syn::LitStr::value);
        let version = m.attrs.version.as_ref().map_or(1, |v| v.base10_parse::<u32>().unwrap_or(1));
        let event_where = extend_where(generics, |t| quote!(#t: #private::Schema));
        // A generic event is an event for exactly the parameters that make its fields storable.
        let event_bounds = quote!(#(#field_storable)*);
        let archived_event_where = generic.then(|| quote!(#event_where #(#field_storable)*));
        let upcast = m.attrs.upcast.as_ref().map(|old| {
            quote_spanned! {old.span()=>
                const INFO: #private::EventInfo = #private::EventInfo {
                    name: #name,
                    version: #version,
                    fingerprint: <Self as #private::Schema>::FINGERPRINT,
                    upcasts_from: ::core::option::Option::Some(&<#old as #private::Event>::INFO),
                };

                fn upcast_older(
                    event: &#private::RecordedEvent<'_>,
                    buf: &mut #private::UpcastBuffer,
                ) -> ::core::result::Result<::core::option::Option<Self>, #private::Error> {
                    #private::upcast_step::<Self, #old>(event, buf)
                }
            }
        });
        let upcast_checks = m.attrs.upcast.as_ref().map(|old| {
            let old_text = quote!(#old).to_string().replace(' ', "");
            let same_name = format!(
                "`#[event(upcast = {old_text})]`: `{old_text}` must be an older version of this event, with the same name {name:?}"
            );
            let lower = format!(
                "`#[event(upcast = {old_text})]`: `{old_text}` must have a lower version than this event's ({version})"
            );
            quote_spanned! {old.span()=>
                const _: () = ::core::assert!(
                    #private::str_eq(<#old as #private::Event>::NAME, #name),
                    #same_name,
                );
                const _: () = ::core::assert!(<#old as #private::Event>::VERSION < #version, #lower);
            }
        });
        quote! {
            #[automatically_derived]
            impl #impl_generics #private::Event for #this #event_where #event_bounds {
                const NAME: &'static str = #name;
                const VERSION: u32 = #version;
                #upcast
            }

            #upcast_checks

            #[automatically_derived]
            impl #impl_generics #private::ArchivedEvent for #archived_ty #archived_event_where
            {
                type Event = #this;
            }
        }
    });

    let layout = crate::layout::describe(input, &private);
    let what = if kind == Kind::Event { "event" } else { "event data" };
    let alias_doc = format!("The archived form of [`{ident}`], read in place from the store ({what}).");
    // Checked before rkyv's derive so that a field type without `#[derive(EventData)]` is
    // reported in our words, next to the field (rkyv's own errors about it follow).
    let field_checks = (!generic).then(|| {
        let checks = field_types.iter().map(|ty| quote_spanned!(ty.span()=> __field_is_storable::<#ty>();));
        quote! {
            #[automatically_derived]
            #[allow(dead_code)]
            const _: () = {
                fn __field_is_storable<T: ?Sized + #private::Schema>() {}
                fn __fields() {
                    #(#checks)*
                }
            };
        }
    });
    quote! {
        #field_checks

        #[doc = #alias_doc]
        #vis type #archived #alias_params = <#this as #rkyv::Archive>::Archived;

        #[automatically_derived]
        #[allow(non_camel_case_types, dead_code, clippy::all, clippy::pedantic)]
        const _: () = {
            #[derive(#rkyv::Archive, #rkyv::Serialize, #rkyv::Deserialize)]
            #[rkyv(crate = #rkyv, remote = #this, archived = #archived, resolver = #resolver)]
            #archived_debug
            #[doc(hidden)]
            #shadow_body

            #archived_serde

            #[automatically_derived]
            impl #impl_generics ::core::convert::From<#shadow_ty> for #this #where_clause {
                fn from(shadow: #shadow_ty) -> Self {
                    #from_body
                }
            }

            #[automatically_derived]
            impl #impl_generics #rkyv::Archive for #this
            #archive_where #shadow_ty: #rkyv::with::ArchiveWith<#this>,
            {
                type Archived = <#shadow_ty as #rkyv::with::ArchiveWith<#this>>::Archived;
                type Resolver = <#shadow_ty as #rkyv::with::ArchiveWith<#this>>::Resolver;

                fn resolve(&self, resolver: Self::Resolver, out: #rkyv::Place<Self::Archived>) {
                    <#shadow_ty as #rkyv::with::ArchiveWith<#this>>::resolve_with(self, resolver, out);
                }
            }

            #[automatically_derived]
            impl #serialize_generics #rkyv::Serialize<__S> for #this
            #serialize_where #shadow_ty: #rkyv::with::SerializeWith<#this, __S>,
            {
                fn serialize(
                    &self,
                    serializer: &mut __S,
                ) -> ::core::result::Result<Self::Resolver, <__S as #rkyv::rancor::Fallible>::Error> {
                    <#shadow_ty as #rkyv::with::SerializeWith<#this, __S>>::serialize_with(self, serializer)
                }
            }

            #[automatically_derived]
            impl #deserialize_generics #rkyv::Deserialize<#this, __D> for #archived_ty
            #deserialize_where #shadow_ty: #rkyv::with::DeserializeWith<#archived_ty, #this, __D>,
            {
                fn deserialize(
                    &self,
                    deserializer: &mut __D,
                ) -> ::core::result::Result<#this, <__D as #rkyv::rancor::Fallible>::Error> {
                    <#shadow_ty as #rkyv::with::DeserializeWith<#archived_ty, #this, __D>>::deserialize_with(
                        self,
                        deserializer,
                    )
                }
            }

            #[automatically_derived]
            impl #impl_generics #private::Schema for #this #schema_where {
                const FINGERPRINT: u64 = #fingerprint;
            }

            #event_impls

            #layout
        };
    }
}

/// Each distinct field type once, in order.
fn unique_field_types<'a>(shape: &'a Shape<'a>) -> Vec<&'a syn::Type> {
    let mut seen = Vec::new();
    let mut out = Vec::new();
    let all: Vec<&syn::Field> = match shape {
        Shape::Struct(f) => f.iter().collect(),
        Shape::Enum(vs) => vs.iter().flat_map(|(_, f)| f.iter()).collect(),
    };
    for field in all {
        let ty = &field.ty;
        let key = quote!(#ty).to_string();
        if !seen.contains(&key) {
            seen.push(key);
            out.push(ty);
        }
    }
    out
}

/// Generic parameters of the `ArchivedX` alias: bounds are not enforced on aliases, so drop them.
fn alias_params(generics: &Generics) -> TokenStream {
    if generics.params.is_empty() {
        return quote!();
    }
    let params = generics.params.iter().map(|p| match p {
        GenericParam::Type(t) => {
            let id = &t.ident;
            quote!(#id)
        }
        GenericParam::Lifetime(l) => {
            let lt = &l.lifetime;
            quote!(#lt)
        }
        GenericParam::Const(c) => {
            let (id, ty) = (&c.ident, &c.ty);
            quote!(const #id: #ty)
        }
    });
    quote!(<#(#params),*>)
}

/// The item's where clause plus one predicate per type parameter (may be empty), always
/// ending in a comma so more predicates can follow.
fn extend_where(generics: &Generics, per_param: impl Fn(&Ident) -> TokenStream) -> TokenStream {
    let existing: Vec<&WherePredicate> =
        generics.where_clause.as_ref().map(|w| w.predicates.iter().collect()).unwrap_or_default();
    let extra: Vec<TokenStream> =
        generics.type_params().map(|t| per_param(&t.ident)).filter(|ts| !ts.is_empty()).collect();
    quote!(where #(#existing,)* #(#extra,)*)
}

/// The item's generic parameters (without defaults, which impls may not repeat) plus one more.
fn with_param(generics: &Generics, param: &TokenStream) -> TokenStream {
    let params = generics.params.iter().map(|p| {
        let mut p = p.clone();
        match &mut p {
            GenericParam::Type(t) => {
                t.eq_token = None;
                t.default = None;
            }
            GenericParam::Const(c) => {
                c.eq_token = None;
                c.default = None;
            }
            GenericParam::Lifetime(_) => {}
        }
        p
    });
    quote!(<#(#params,)* #param>)
}

fn strip_field_attrs(fields: &Fields) -> TokenStream {
    let fs = fields.iter().map(|f| {
        let (vis, ty) = (&f.vis, &f.ty);
        match &f.ident {
            Some(id) => quote!(#vis #id: #ty),
            None => quote!(#vis #ty),
        }
    });
    match fields {
        Fields::Named(_) => quote!({ #(#fs),* }),
        Fields::Unnamed(_) => quote!(( #(#fs),* )),
        Fields::Unit => quote!(),
    }
}

/// A pattern binding every field of a shadow value, and the matching constructor of the
/// user's value.
fn destructure(fields: &Fields) -> (TokenStream, TokenStream) {
    match fields {
        Fields::Named(fields) => {
            let names: Vec<&Ident> = fields.named.iter().filter_map(|f| f.ident.as_ref()).collect();
            (quote!({ #(#names),* }), quote!({ #(#names),* }))
        }
        Fields::Unnamed(unnamed) => {
            let names: Vec<Ident> = (0..unnamed.unnamed.len())
                .map(|i| Ident::new(&format!("__f{i}"), Span::call_site()))
                .collect();
            (quote!(( #(#names),* )), quote!(( #(#names),* )))
        }
        Fields::Unit => (quote!(), quote!()),
    }
}

/// A `const` expression folding field names, order and types into a fingerprint.
fn fingerprint(shape: &Shape<'_>, private: &TokenStream) -> TokenStream {
    let fp = quote!(#private::fingerprint);
    let fields = |fields: &Fields| -> TokenStream {
        let steps = fields.iter().enumerate().map(|(i, f)| {
            let name = f.ident.as_ref().map_or_else(|| i.to_string(), ToString::to_string);
            let ty = &f.ty;
            quote_spanned! {ty.span()=>
                let h = #fp::text(h, #name);
                let h = #fp::number(h, <#ty as #private::Schema>::FINGERPRINT);
            }
        });
        let kind = match fields {
            Fields::Named(_) => "named",
            Fields::Unnamed(_) => "tuple",
            Fields::Unit => "unit",
        };
        quote!(let h = #fp::text(h, #kind); #(#steps)*)
    };
    match shape {
        Shape::Struct(f) => {
            let body = fields(f);
            quote!({ let h = #fp::leaf("struct"); #body h })
        }
        Shape::Enum(variants) => {
            let steps = variants.iter().map(|(name, f)| {
                let name = name.to_string();
                let body = fields(f);
                quote!(let h = #fp::text(h, #name); #body)
            });
            quote!({ let h = #fp::leaf("enum"); #(#steps)* h })
        }
    }
}
