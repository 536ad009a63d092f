//! `serde::Serialize` for `ArchivedX`, written out field by field in the shape serde's own
//! derive gives `X` (structs as structs, enums externally tagged). Each field goes through
//! varvedb's `AsSerde`, which knows the archived forms of the field types. The impls pass
//! through varvedb's `serde_archived!`, which drops them unless varvedb's `serde` feature is
//! on.

use proc_macro2::TokenStream;
use quote::quote;
use syn::ext::IdentExt;
use syn::{Fields, Ident, Index};

use crate::event::Shape;

/// The impls for the archived type `archived` of `ident` (not generic).
pub(crate) fn expand(
    ident: &Ident,
    archived: &Ident,
    shape: &Shape<'_>,
    private: &TokenStream,
) -> TokenStream {
    let serde = quote!(#private::serde);
    let name = ident.unraw().to_string();
    let body = match shape {
        Shape::Struct(fields) => struct_body(&name, fields, &serde, private),
        Shape::Enum(variants) => {
            let arms = variants.iter().enumerate().map(|(index, (variant, fields))| {
                let index = u32::try_from(index).unwrap_or(u32::MAX);
                let variant_name = variant.unraw().to_string();
                variant_arm(archived, &name, index, variant, &variant_name, fields, &serde, private)
            });
            quote!(match self { #(#arms)* })
        }
    };
    quote! {
        #private::serde_archived! {
            #[automatically_derived]
            impl #serde::Serialize for #archived {
                fn serialize<__S: #serde::Serializer>(
                    &self,
                    __serializer: __S,
                ) -> ::core::result::Result<__S::Ok, __S::Error> {
                    #body
                }
            }

            #[automatically_derived]
            impl #private::SerializeArchived for #archived {
                fn serialize_archived<__S: #serde::Serializer>(
                    &self,
                    __serializer: __S,
                ) -> ::core::result::Result<__S::Ok, __S::Error> {
                    #serde::Serialize::serialize(self, __serializer)
                }
            }
        }
    }
}

fn struct_body(name: &str, fields: &Fields, serde: &TokenStream, private: &TokenStream) -> TokenStream {
    let len = fields.len();
    match fields {
        Fields::Unit => quote!(#serde::Serializer::serialize_unit_struct(__serializer, #name)),
        Fields::Named(named) => {
            let puts = named.named.iter().map(|f| {
                let ident = f.ident.as_ref().expect("named field");
                let key = ident.unraw().to_string();
                quote!(#serde::ser::SerializeStruct::serialize_field(&mut __s, #key, &#private::AsSerde(&self.#ident))?;)
            });
            quote! {
                let mut __s = #serde::Serializer::serialize_struct(__serializer, #name, #len)?;
                #(#puts)*
                #serde::ser::SerializeStruct::end(__s)
            }
        }
        Fields::Unnamed(_) if len == 1 => {
            quote!(#serde::Serializer::serialize_newtype_struct(__serializer, #name, &#private::AsSerde(&self.0)))
        }
        Fields::Unnamed(_) => {
            let puts = (0..len).map(|i| {
                let i = Index::from(i);
                quote!(#serde::ser::SerializeTupleStruct::serialize_field(&mut __s, &#private::AsSerde(&self.#i))?;)
            });
            quote! {
                let mut __s = #serde::Serializer::serialize_tuple_struct(__serializer, #name, #len)?;
                #(#puts)*
                #serde::ser::SerializeTupleStruct::end(__s)
            }
        }
    }
}

#[expect(clippy::too_many_arguments, reason = "the parts of one match arm")]
fn variant_arm(
    archived: &Ident,
    name: &str,
    index: u32,
    variant: &Ident,
    variant_name: &str,
    fields: &Fields,
    serde: &TokenStream,
    private: &TokenStream,
) -> TokenStream {
    let len = fields.len();
    match fields {
        Fields::Unit => quote! {
            #archived::#variant => #serde::Serializer::serialize_unit_variant(__serializer, #name, #index, #variant_name),
        },
        Fields::Named(named) => {
            let idents: Vec<&Ident> =
                named.named.iter().map(|f| f.ident.as_ref().expect("named field")).collect();
            let puts = idents.iter().map(|ident| {
                let key = ident.unraw().to_string();
                quote!(#serde::ser::SerializeStructVariant::serialize_field(&mut __s, #key, &#private::AsSerde(#ident))?;)
            });
            quote! {
                #archived::#variant { #(#idents),* } => {
                    let mut __s = #serde::Serializer::serialize_struct_variant(
                        __serializer, #name, #index, #variant_name, #len,
                    )?;
                    #(#puts)*
                    #serde::ser::SerializeStructVariant::end(__s)
                }
            }
        }
        Fields::Unnamed(_) if len == 1 => quote! {
            #archived::#variant(__f0) => #serde::Serializer::serialize_newtype_variant(
                __serializer, #name, #index, #variant_name, &#private::AsSerde(__f0),
            ),
        },
        Fields::Unnamed(_) => {
            let bindings: Vec<Ident> = (0..len).map(|i| quote::format_ident!("__f{}", i)).collect();
            quote! {
                #archived::#variant(#(#bindings),*) => {
                    let mut __s = #serde::Serializer::serialize_tuple_variant(
                        __serializer, #name, #index, #variant_name, #len,
                    )?;
                    #(#serde::ser::SerializeTupleVariant::serialize_field(&mut __s, &#private::AsSerde(#bindings))?;)*
                    #serde::ser::SerializeTupleVariant::end(__s)
                }
            }
        }
    }
}
