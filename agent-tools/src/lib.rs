//! The `#[tool]` procedural macro, re-exported by `agent-core` as `agent_core::tool`.
//! See the documentation of `agent_core::tool` (the macro) for the attribute table and examples.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote, quote_spanned};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{
    Attribute, Expr, FnArg, ImplItem, ImplItemFn, ItemFn, ItemImpl, Lit, LitStr, Meta, Pat,
    ReturnType, Signature, Token, Type, Visibility,
};

/// Turns a documented function, or the `#[tool]` methods of an `impl` block, into agent tools.
/// Documented in `agent_core::tool` (the macro's re-export).
#[proc_macro_attribute]
pub fn tool(attr: TokenStream, item: TokenStream) -> TokenStream {
    let attr = TokenStream2::from(attr);
    let item = TokenStream2::from(item);
    let result = if let Ok(func) = syn::parse2::<ItemFn>(item.clone()) {
        expand_fn(attr, func)
    } else if let Ok(block) = syn::parse2::<ItemImpl>(item.clone()) {
        if attr.is_empty() {
            expand_impl(block)
        } else {
            Err(syn::Error::new(
                attr.span(),
                "#[tool] on an impl block takes no arguments; put `name`/`description` on the methods",
            ))
        }
    } else {
        Err(syn::Error::new(
            Span::call_site(),
            "#[tool] applies to a function or to an impl block",
        ))
    };
    result.unwrap_or_else(syn::Error::into_compile_error).into()
}

/// The path of the agent-core crate as the user's Cargo.toml names it.
fn core_path() -> TokenStream2 {
    match proc_macro_crate::crate_name("agent-core") {
        Ok(proc_macro_crate::FoundCrate::Name(name)) => {
            let ident = format_ident!("{}", name);
            quote!(::#ident)
        }
        // Inside agent-core itself (it declares `extern crate self as agent_core`), or when the
        // manifest cannot be read: the default name.
        _ => quote!(::agent_core),
    }
}

#[derive(Default)]
struct ToolAttr {
    name: Option<LitStr>,
    description: Option<LitStr>,
    idempotent: bool,
}

fn parse_attr(attr: TokenStream2) -> syn::Result<ToolAttr> {
    let mut out = ToolAttr::default();
    if attr.is_empty() {
        return Ok(out);
    }
    let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(attr)?;
    for meta in metas {
        if let Meta::Path(path) = &meta
            && path.is_ident("idempotent")
        {
            out.idempotent = true;
            continue;
        }
        let Meta::NameValue(nv) = &meta else {
            return Err(syn::Error::new(
                meta.span(),
                "expected `name = \"...\"` or `description = \"...\"`",
            ));
        };
        let Expr::Lit(syn::ExprLit {
            lit: Lit::Str(s), ..
        }) = &nv.value
        else {
            return Err(syn::Error::new(
                nv.value.span(),
                "expected a string literal",
            ));
        };
        if nv.path.is_ident("name") {
            out.name = Some(s.clone());
        } else if nv.path.is_ident("description") {
            out.description = Some(s.clone());
        } else {
            return Err(syn::Error::new(
                nv.path.span(),
                "unknown #[tool] argument: use `name` or `description`",
            ));
        }
    }
    Ok(out)
}

/// The text of `///` doc attributes, lines trimmed and joined.
fn doc_text(attrs: &[Attribute]) -> String {
    let mut lines = Vec::new();
    for a in attrs {
        if !a.path().is_ident("doc") {
            continue;
        }
        if let Meta::NameValue(nv) = &a.meta
            && let Expr::Lit(syn::ExprLit {
                lit: Lit::Str(s), ..
            }) = &nv.value
        {
            lines.push(s.value().trim().to_owned());
        }
    }
    while lines.last().is_some_and(String::is_empty) {
        lines.pop();
    }
    while lines.first().is_some_and(String::is_empty) {
        lines.remove(0);
    }
    lines.join("\n")
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn last_segment_is(ty: &Type, ident: &str) -> bool {
    match ty {
        Type::Path(p) => p.path.segments.last().is_some_and(|s| s.ident == ident),
        Type::Reference(r) => last_segment_is(&r.elem, ident),
        Type::Group(g) => last_segment_is(&g.elem, ident),
        Type::Paren(p) => last_segment_is(&p.elem, ident),
        _ => false,
    }
}

enum Receiver {
    None,
    Ref,
}

struct Param {
    ident: syn::Ident,
    ty: Type,
    doc: String,
}

struct Analysed {
    name: String,
    name_span: Span,
    description: String,
    receiver: Receiver,
    params: Vec<Param>,
    /// Position of the context parameter among the inputs (after the receiver), and whether it
    /// is taken by reference.
    context: Option<(usize, bool)>,
    is_async: bool,
    returns_result: bool,
    idempotent: bool,
}

/// Checks a signature and collects what the expansion needs; strips `///` from parameters.
fn analyse(
    sig: &mut Signature,
    attrs: &[Attribute],
    attr: ToolAttr,
    in_impl: bool,
) -> syn::Result<Analysed> {
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "#[tool] functions cannot be generic: a tool's input schema is fixed at compile time; use concrete types",
        ));
    }
    if let Some(v) = &sig.variadic {
        return Err(syn::Error::new(
            v.span(),
            "#[tool] functions cannot be variadic",
        ));
    }
    let name_span = attr.name.as_ref().map_or(sig.ident.span(), LitStr::span);
    let name = attr
        .name
        .as_ref()
        .map_or_else(|| sig.ident.to_string(), LitStr::value);
    if !valid_name(&name) {
        return Err(syn::Error::new(
            name_span,
            format!(
                "invalid tool name `{name}`: use 1 to 64 ASCII letters, digits, `_` or `-` (set one with #[tool(name = \"...\")])"
            ),
        ));
    }
    let description = attr
        .description
        .as_ref()
        .map_or_else(|| doc_text(attrs), LitStr::value);
    if description.is_empty() {
        return Err(syn::Error::new(
            sig.ident.span(),
            "a tool needs a description: add a `///` doc comment to the function or #[tool(description = \"...\")]",
        ));
    }
    let mut receiver = Receiver::None;
    let mut params = Vec::new();
    let mut context = None;
    let mut position = 0usize;
    for input in sig.inputs.iter_mut() {
        match input {
            FnArg::Receiver(r) => {
                if !in_impl {
                    return Err(syn::Error::new(r.span(), "`self` outside an impl block"));
                }
                if r.reference.is_none() || r.mutability.is_some() {
                    return Err(syn::Error::new(
                        r.span(),
                        "#[tool] methods take `&self`: one tool value serves concurrent calls, so it cannot be consumed or borrowed mutably (use interior mutability for state)",
                    ));
                }
                receiver = Receiver::Ref;
            }
            FnArg::Typed(pt) => {
                let doc = doc_text(&pt.attrs);
                pt.attrs.retain(|a| !a.path().is_ident("doc"));
                if last_segment_is(&pt.ty, "ToolContext") {
                    if context.is_some() {
                        return Err(syn::Error::new(
                            pt.ty.span(),
                            "a #[tool] function takes at most one `ToolContext` parameter",
                        ));
                    }
                    context = Some((position, matches!(*pt.ty, Type::Reference(_))));
                } else {
                    let Pat::Ident(pi) = &*pt.pat else {
                        return Err(syn::Error::new(
                            pt.pat.span(),
                            "#[tool] parameters must be plain names: the name is the JSON property",
                        ));
                    };
                    params.push(Param {
                        ident: pi.ident.clone(),
                        ty: (*pt.ty).clone(),
                        doc,
                    });
                }
                position += 1;
            }
        }
    }
    let returns_result = match &sig.output {
        ReturnType::Type(_, ty) => last_segment_is(ty, "Result"),
        ReturnType::Default => false,
    };
    Ok(Analysed {
        name,
        name_span,
        description,
        receiver,
        params,
        context,
        is_async: sig.asyncness.is_some(),
        returns_result,
        idempotent: attr.idempotent,
    })
}

/// The `spec()` and `call()` bodies shared by both forms. `invoke` calls the function with the
/// argument expressions in order.
fn tool_impl(
    core: &TokenStream2,
    a: &Analysed,
    target: TokenStream2,
    invoke: impl Fn(&[TokenStream2]) -> TokenStream2,
    needs_owned_self: bool,
) -> TokenStream2 {
    let m = quote!(#core::tool::__macro);
    let idempotent = if a.idempotent {
        quote!(
            fn idempotent(&self) -> bool {
                true
            }
        )
    } else {
        quote!()
    };
    let name = LitStr::new(&a.name, a.name_span);
    let description = &a.description;
    let props = a.params.iter().map(|p| {
        let key = p.ident.to_string().trim_start_matches("r#").to_owned();
        let ty = &p.ty;
        let doc = &p.doc;
        let required = !last_segment_is(ty, "Option");
        let doc_expr = if doc.is_empty() { quote!(::core::option::Option::None) } else { quote!(::core::option::Option::Some(#doc)) };
        quote_spanned! {ty.span()=>
            #m::property::<#ty>(&mut __generator, &mut __properties, &mut __required, #key, #doc_expr, #required);
        }
    });
    let extract = a.params.iter().map(|p| {
        let ident = &p.ident;
        let key = p.ident.to_string().trim_start_matches("r#").to_owned();
        let ty = &p.ty;
        quote_spanned! {ty.span()=> let #ident: #ty = #m::argument::<#ty>(&mut __args, #key)?; }
    });
    // Arguments in declaration order, the context at its position.
    let total = a.params.len() + usize::from(a.context.is_some());
    let mut args = Vec::with_capacity(total);
    let mut normal = a.params.iter();
    for i in 0..total {
        match a.context {
            Some((pos, by_ref)) if pos == i => args.push(if by_ref {
                quote!(&__ctx)
            } else {
                quote!(__ctx.clone())
            }),
            _ => {
                if let Some(p) = normal.next() {
                    let ident = &p.ident;
                    args.push(quote!(#ident));
                }
            }
        }
    }
    let call = invoke(&args);
    let run = if a.is_async {
        quote!(#call.await)
    } else {
        let this = if needs_owned_self {
            quote!(let __this = ::std::sync::Arc::clone(&self.0);)
        } else {
            quote!()
        };
        quote!({
            #this
            #m::blocking(move || #call).await?
        })
    };
    let finish = if a.returns_result {
        quote!(match __ret {
            ::core::result::Result::Ok(v) => #m::output(&v),
            ::core::result::Result::Err(e) => ::core::result::Result::Err(#core::tool::ToolError::new(e)),
        })
    } else {
        quote!(#m::output(&__ret))
    };
    quote! {
        #[#core::async_trait]
        impl #core::tool::Tool for #target {
            fn spec(&self) -> #core::tool::ToolSpec {
                let mut __generator = #m::generator();
                let mut __properties = #m::Map::new();
                let mut __required = ::std::vec::Vec::new();
                #(#props)*
                #core::tool::ToolSpec {
                    name: ::std::string::String::from(#name),
                    description: ::std::string::String::from(#description),
                    input_schema: #m::object_schema(__properties, __required),
                }
            }

            #idempotent

            async fn call(
                &self,
                __input: #m::Value,
                __ctx: #core::tool::ToolContext,
            ) -> ::core::result::Result<#core::tool::ToolOutput, #core::tool::ToolError> {
                #[allow(unused_mut)]
                let mut __args = #m::arguments(__input)?;
                #(#extract)*
                let _ = &__ctx;
                let __ret = #run;
                #finish
            }
        }
    }
}

fn expand_fn(attr: TokenStream2, mut func: ItemFn) -> syn::Result<TokenStream2> {
    let core = core_path();
    let attr = parse_attr(attr)?;
    let a = analyse(&mut func.sig, &func.attrs, attr, false)?;
    let ident = func.sig.ident.clone();
    let vis = &func.vis;
    let docs: Vec<&Attribute> = func
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .collect();
    let mut inner = func.clone();
    inner.sig.ident = format_ident!("run");
    inner.vis = match vis {
        Visibility::Inherited => syn::parse_quote!(pub(crate)),
        other => other.clone(),
    };
    let inner_doc = format!("Calls the `{ident}` tool's function directly.");
    inner.attrs.retain(|a| !a.path().is_ident("doc"));
    let target = quote!(#ident);
    let tool = tool_impl(
        &core,
        &a,
        target,
        |args| quote!(#ident::run(#(#args),*)),
        false,
    );
    Ok(quote! {
        #(#docs)*
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy, Default)]
        #vis struct #ident;

        impl #ident {
            #[doc = #inner_doc]
            #inner
        }

        #tool
    })
}

fn expand_impl(mut block: ItemImpl) -> syn::Result<TokenStream2> {
    let core = core_path();
    if !block.generics.params.is_empty() {
        return Err(syn::Error::new(
            block.generics.span(),
            "#[tool] impl blocks cannot be generic; use a concrete type",
        ));
    }
    if let Some((_, path, _)) = &block.trait_ {
        return Err(syn::Error::new(
            path.span(),
            "#[tool] goes on an inherent impl block, not a trait impl",
        ));
    }
    let self_ty = (*block.self_ty).clone();
    let type_name = match &self_ty {
        Type::Path(p) => p
            .path
            .segments
            .last()
            .map(|s| s.ident.to_string())
            .unwrap_or_default(),
        _ => {
            return Err(syn::Error::new(
                self_ty.span(),
                "#[tool] impl blocks must be for a named type",
            ));
        }
    };
    let mut tools = Vec::new();
    let mut constructors = Vec::new();
    for item in block.items.iter_mut() {
        let ImplItem::Fn(method) = item else { continue };
        let Some(index) = method.attrs.iter().position(|a| a.path().is_ident("tool")) else {
            continue;
        };
        let tool_attr = method.attrs.remove(index);
        let args = match &tool_attr.meta {
            Meta::Path(_) => TokenStream2::new(),
            Meta::List(l) => l.tokens.clone(),
            Meta::NameValue(nv) => {
                return Err(syn::Error::new(
                    nv.span(),
                    "use #[tool] or #[tool(name = \"...\")]",
                ));
            }
        };
        let parsed = parse_attr(args)?;
        let ImplItemFn { sig, attrs, .. } = method;
        let a = analyse(sig, attrs, parsed, true)?;
        let method_ident = sig.ident.clone();
        let struct_ident = format_ident!("__AgentTool_{}_{}", type_name, method_ident);
        let with_self = matches!(a.receiver, Receiver::Ref);
        let tool = if with_self {
            tool_impl(
                &core,
                &a,
                quote!(#struct_ident),
                |args| {
                    if a.is_async {
                        quote!(self.0.#method_ident(#(#args),*))
                    } else {
                        quote!(__this.#method_ident(#(#args),*))
                    }
                },
                true,
            )
        } else {
            tool_impl(
                &core,
                &a,
                quote!(#struct_ident),
                |args| quote!(<#self_ty>::#method_ident(#(#args),*)),
                false,
            )
        };
        tools.push(quote! {
            #[doc(hidden)]
            #[allow(non_camel_case_types)]
            pub struct #struct_ident(::std::sync::Arc<#self_ty>);
            #tool
        });
        constructors.push(quote!(::std::sync::Arc::new(#struct_ident(::std::sync::Arc::clone(&self))) as ::std::sync::Arc<dyn #core::tool::Tool>));
    }
    if tools.is_empty() {
        return Err(syn::Error::new(
            block.self_ty.span(),
            "this #[tool] impl block has no #[tool] methods: mark the methods that are tools with #[tool]",
        ));
    }
    Ok(quote! {
        #block

        #(#tools)*

        impl #self_ty {
            /// The block's `#[tool]` methods as agent tools, sharing this value.
            pub fn shared_tools(self: ::std::sync::Arc<Self>) -> ::std::vec::Vec<::std::sync::Arc<dyn #core::tool::Tool>> {
                ::std::vec![#(#constructors),*]
            }

            /// The block's `#[tool]` methods as agent tools, sharing this value.
            pub fn into_tools(self) -> ::std::vec::Vec<::std::sync::Arc<dyn #core::tool::Tool>> {
                ::std::sync::Arc::new(self).shared_tools()
            }
        }
    })
}
