//! The Ingress, when `spec.ingress.enabled`.

use super::*;
use crate::crd::SessionCluster;
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};

/// The Ingress routing `/` to the app Service, or `None` when disabled.
pub fn ingress(sc: &SessionCluster) -> Option<Ingress> {
    let spec = sc.spec.ingress.as_ref().filter(|i| i.enabled)?;
    let backend = IngressBackend {
        service: Some(IngressServiceBackend {
            name: sc.name_any(),
            port: Some(ServiceBackendPort {
                number: Some(HTTP_PORT),
                name: None,
            }),
        }),
        resource: None,
    };
    let rule = IngressRule {
        host: spec.host.clone(),
        http: Some(HTTPIngressRuleValue {
            paths: vec![HTTPIngressPath {
                path: Some("/".into()),
                path_type: "Prefix".into(),
                backend,
            }],
        }),
    };
    let tls = spec.tls.as_ref().map(|t| {
        vec![IngressTLS {
            hosts: spec.host.clone().map(|h| vec![h]),
            secret_name: Some(t.secret_name.clone()),
        }]
    });
    Some(Ingress {
        metadata: child_meta(sc, sc.name_any()),
        spec: Some(IngressSpec {
            ingress_class_name: spec.class_name.clone(),
            rules: Some(vec![rule]),
            tls,
            default_backend: None,
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{IngressSpec as Spec, IngressTls};
    use crate::fixtures::cluster;

    #[test]
    fn absent_unless_enabled() {
        let mut sc = cluster("shop", "web");
        assert!(ingress(&sc).is_none());
        sc.spec.ingress = Some(Spec {
            enabled: false,
            host: Some("x".into()),
            ..Spec::default()
        });
        assert!(ingress(&sc).is_none());
    }

    #[test]
    fn routes_to_app_service() {
        let mut sc = cluster("shop", "web");
        sc.spec.ingress = Some(Spec {
            enabled: true,
            host: Some("shop.example.com".into()),
            class_name: Some("nginx".into()),
            tls: Some(IngressTls {
                secret_name: "shop-tls".into(),
            }),
        });
        let ing = ingress(&sc).unwrap();
        assert_eq!(ing.metadata.name.as_deref(), Some("shop"));
        assert_eq!(
            ing.metadata.owner_references.as_ref().unwrap()[0].name,
            "shop"
        );
        let spec = ing.spec.unwrap();
        assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
        let rule = &spec.rules.unwrap()[0];
        assert_eq!(rule.host.as_deref(), Some("shop.example.com"));
        let svc = rule.http.as_ref().unwrap().paths[0]
            .backend
            .service
            .clone()
            .unwrap();
        assert_eq!(svc.name, "shop");
        assert_eq!(svc.port.unwrap().number, Some(8080));
        let tls = &spec.tls.unwrap()[0];
        assert_eq!(tls.secret_name.as_deref(), Some("shop-tls"));
        assert_eq!(
            tls.hosts.as_ref().unwrap(),
            &vec!["shop.example.com".to_string()]
        );
    }
}
