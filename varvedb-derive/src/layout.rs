//! The `varvedb::Describe` impl of `#[derive(Event)]` and `#[derive(EventData)]`: the layout
//! description the store records beside the fingerprint, built from the same input.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields};

/// The impl, or nothing for input the derive reports as an error elsewhere (unions).
pub(crate) fn describe(input: &DeriveInput, private: &TokenStream) -> TokenStream {
    let ident = &input.ident;
    let name = ident.to_string();
    let (impl_generics, ty_generics, _) = input.generics.split_for_impl();
    let existing = input.generics.where_clause.as_ref().map(|w| w.predicates.iter().collect::<Vec<_>>());
    let existing = existing.unwrap_or_default();
    let params = input.generics.type_params().map(|t| {
        let t = &t.ident;
        quote!(#t: #private::Describe)
    });
    let body = match &input.data {
        Data::Struct(s) => {
            let fields = fields(&s.fields, private);
            quote!(#private::Layout::Struct { name: ::std::string::String::from(#name), fields: #fields })
        }
        Data::Enum(e) => {
            let variants = e.variants.iter().map(|v| {
                let vname = v.ident.to_string();
                let fields = fields(&v.fields, private);
                quote!((::std::string::String::from(#vname), #fields))
            });
            quote!(#private::Layout::Enum {
                name: ::std::string::String::from(#name),
                variants: ::std::vec![#(#variants),*],
            })
        }
        Data::Union(_) => return quote!(),
    };
    quote! {
        #[automatically_derived]
        impl #impl_generics #private::Describe for #ident #ty_generics where #(#existing,)* #(#params,)* {
            fn layout() -> #private::Layout {
                #body
            }
        }
    }
}

fn fields(fields: &Fields, private: &TokenStream) -> TokenStream {
    match fields {
        Fields::Unit => quote!(#private::Fields::Unit),
        Fields::Unnamed(f) => {
            let items = f.unnamed.iter().map(|f| {
                let ty = &f.ty;
                quote_spanned!(ty.span()=> <#ty as #private::Describe>::layout())
            });
            quote!(#private::Fields::Tuple(::std::vec![#(#items),*]))
        }
        Fields::Named(f) => {
            let items = f.named.iter().map(|f| {
                let ty = &f.ty;
                let name = f.ident.as_ref().map(ToString::to_string).unwrap_or_default();
                quote_spanned!(ty.span()=> (::std::string::String::from(#name), <#ty as #private::Describe>::layout()))
            });
            quote!(#private::Fields::Named(::std::vec![#(#items),*]))
        }
    }
}
