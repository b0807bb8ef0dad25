//! Request bodies in the API's protobuf encoding (`application/vnd.kubernetes.protobuf`),
//! turned into the JSON the rest of the emulator works on. kubectl 1.32 and later send
//! the objects of its imperative commands (`create namespace`, `create secret generic`,
//! `create role`, ...) this way and do not fall back to JSON on 415.
//!
//! The envelope is the `k8s\0` magic followed by a `runtime.Unknown` message carrying
//! the `apiVersion`/`kind` and the object's own message. Only the messages of the kinds
//! kubectl creates imperatively are described below; any other kind, or a field number
//! a description lacks, is refused with a message naming it (never guessed).
use serde_json::{json, Map, Value};

pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";
const MAGIC: &[u8] = b"k8s\0";

#[derive(Clone, Copy)]
enum Ty {
    Str,
    Bytes,
    /// A pointer bool (`*bool`): sent only when set, `false` included.
    Bool,
    /// A plain bool: always sent, left out of JSON when false.
    Flag,
    /// A plain integer: always sent, left out of JSON when 0.
    Int,
    /// A pointer integer (`*int32`): sent only when set, 0 included.
    IntPtr,
    /// `map<string, resource.Quantity>`.
    MapQuantity,
    Msg(&'static [Field]),
    /// `metav1.Time`: seconds and nanos, as RFC 3339.
    Time,
    IntOrString,
    MapStr,
    MapBytes,
    /// Server-owned (a create's `status`): read past, not decoded.
    Ignored,
}

/// One field of a message: number, JSON name, type, repeated.
type Field = (u64, &'static str, Ty, bool);

const fn f(n: u64, name: &'static str, ty: Ty) -> Field {
    (n, name, ty, false)
}
const fn rep(n: u64, name: &'static str, ty: Ty) -> Field {
    (n, name, ty, true)
}

const OWNER_REFERENCE: &[Field] = &[
    f(1, "kind", Ty::Str),
    f(3, "name", Ty::Str),
    f(4, "uid", Ty::Str),
    f(5, "apiVersion", Ty::Str),
    f(6, "controller", Ty::Bool),
    f(7, "blockOwnerDeletion", Ty::Bool),
];
const OBJECT_META: &[Field] = &[
    f(1, "name", Ty::Str),
    f(2, "generateName", Ty::Str),
    f(3, "namespace", Ty::Str),
    f(4, "selfLink", Ty::Str),
    f(5, "uid", Ty::Str),
    f(6, "resourceVersion", Ty::Str),
    f(7, "generation", Ty::Int),
    f(8, "creationTimestamp", Ty::Time),
    f(9, "deletionTimestamp", Ty::Time),
    f(10, "deletionGracePeriodSeconds", Ty::Int),
    f(11, "labels", Ty::MapStr),
    f(12, "annotations", Ty::MapStr),
    rep(13, "ownerReferences", Ty::Msg(OWNER_REFERENCE)),
    rep(14, "finalizers", Ty::Str),
];
const REQUIREMENT: &[Field] = &[f(1, "key", Ty::Str), f(2, "operator", Ty::Str), rep(3, "values", Ty::Str)];
const LABEL_SELECTOR: &[Field] = &[f(1, "matchLabels", Ty::MapStr), rep(2, "matchExpressions", Ty::Msg(REQUIREMENT))];
const NAME_ONLY: &[Field] = &[f(1, "name", Ty::Str)];
const OBJECT_REFERENCE: &[Field] = &[
    f(1, "kind", Ty::Str),
    f(2, "namespace", Ty::Str),
    f(3, "name", Ty::Str),
    f(4, "uid", Ty::Str),
    f(5, "apiVersion", Ty::Str),
    f(6, "resourceVersion", Ty::Str),
    f(7, "fieldPath", Ty::Str),
];
const NAMESPACE: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(2, "spec", Ty::Msg(&[rep(1, "finalizers", Ty::Str)])),
    f(3, "status", Ty::Ignored),
];
const SECRET: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(2, "data", Ty::MapBytes),
    f(3, "type", Ty::Str),
    f(4, "stringData", Ty::MapStr),
    f(5, "immutable", Ty::Bool),
];
const CONFIG_MAP: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(2, "data", Ty::MapStr),
    f(3, "binaryData", Ty::MapBytes),
    f(4, "immutable", Ty::Bool),
];
const SERVICE_ACCOUNT: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    rep(2, "secrets", Ty::Msg(OBJECT_REFERENCE)),
    rep(3, "imagePullSecrets", Ty::Msg(NAME_ONLY)),
    f(4, "automountServiceAccountToken", Ty::Bool),
];
const POLICY_RULE: &[Field] = &[
    rep(1, "verbs", Ty::Str),
    rep(2, "apiGroups", Ty::Str),
    rep(3, "resources", Ty::Str),
    rep(4, "resourceNames", Ty::Str),
    rep(5, "nonResourceURLs", Ty::Str),
];
const ROLE: &[Field] = &[f(1, "metadata", Ty::Msg(OBJECT_META)), rep(2, "rules", Ty::Msg(POLICY_RULE))];
const CLUSTER_ROLE: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    rep(2, "rules", Ty::Msg(POLICY_RULE)),
    f(3, "aggregationRule", Ty::Msg(&[rep(1, "clusterRoleSelectors", Ty::Msg(LABEL_SELECTOR))])),
];
const SUBJECT: &[Field] =
    &[f(1, "kind", Ty::Str), f(2, "apiGroup", Ty::Str), f(3, "name", Ty::Str), f(4, "namespace", Ty::Str)];
const ROLE_BINDING: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    rep(2, "subjects", Ty::Msg(SUBJECT)),
    f(3, "roleRef", Ty::Msg(&[f(1, "apiGroup", Ty::Str), f(2, "kind", Ty::Str), f(3, "name", Ty::Str)])),
];
const PDB: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(
        2,
        "spec",
        Ty::Msg(&[
            f(1, "minAvailable", Ty::IntOrString),
            f(2, "selector", Ty::Msg(LABEL_SELECTOR)),
            f(3, "maxUnavailable", Ty::IntOrString),
            f(4, "unhealthyPodEvictionPolicy", Ty::Str),
        ]),
    ),
    f(3, "status", Ty::Ignored),
];

const QUANTITY: &[Field] = &[f(1, "string", Ty::Str)];
const CONTAINER_PORT: &[Field] = &[
    f(1, "name", Ty::Str),
    f(2, "hostPort", Ty::Int),
    f(3, "containerPort", Ty::Int),
    f(4, "protocol", Ty::Str),
    f(5, "hostIP", Ty::Str),
];
const ENV_VAR: &[Field] = &[f(1, "name", Ty::Str), f(2, "value", Ty::Str)];
const CONTAINER: &[Field] = &[
    f(1, "name", Ty::Str),
    f(2, "image", Ty::Str),
    rep(3, "command", Ty::Str),
    rep(4, "args", Ty::Str),
    f(5, "workingDir", Ty::Str),
    rep(6, "ports", Ty::Msg(CONTAINER_PORT)),
    rep(7, "env", Ty::Msg(ENV_VAR)),
    f(8, "resources", Ty::Msg(&[f(1, "limits", Ty::MapQuantity), f(2, "requests", Ty::MapQuantity)])),
    f(13, "terminationMessagePath", Ty::Str),
    f(14, "imagePullPolicy", Ty::Str),
    f(16, "stdin", Ty::Flag),
    f(17, "stdinOnce", Ty::Flag),
    f(18, "tty", Ty::Flag),
    f(20, "terminationMessagePolicy", Ty::Str),
];
/// The pod spec fields `kubectl create deployment|job|cronjob` fill in.
const POD_SPEC: &[Field] = &[
    rep(2, "containers", Ty::Msg(CONTAINER)),
    f(3, "restartPolicy", Ty::Str),
    f(4, "terminationGracePeriodSeconds", Ty::IntPtr),
    f(6, "dnsPolicy", Ty::Str),
    f(7, "nodeSelector", Ty::MapStr),
    f(8, "serviceAccountName", Ty::Str),
    f(9, "serviceAccount", Ty::Str),
    f(10, "nodeName", Ty::Str),
    f(11, "hostNetwork", Ty::Flag),
    f(12, "hostPID", Ty::Flag),
    f(13, "hostIPC", Ty::Flag),
    f(16, "hostname", Ty::Str),
    f(17, "subdomain", Ty::Str),
    f(19, "schedulerName", Ty::Str),
    f(24, "priorityClassName", Ty::Str),
];
const POD_TEMPLATE: &[Field] = &[f(1, "metadata", Ty::Msg(OBJECT_META)), f(2, "spec", Ty::Msg(POD_SPEC))];
const DEPLOYMENT: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(
        2,
        "spec",
        Ty::Msg(&[
            f(1, "replicas", Ty::IntPtr),
            f(2, "selector", Ty::Msg(LABEL_SELECTOR)),
            f(3, "template", Ty::Msg(POD_TEMPLATE)),
            f(4, "strategy", Ty::Msg(&[f(1, "type", Ty::Str)])),
            f(5, "minReadySeconds", Ty::Int),
            f(6, "revisionHistoryLimit", Ty::IntPtr),
            f(7, "paused", Ty::Flag),
            f(9, "progressDeadlineSeconds", Ty::IntPtr),
        ]),
    ),
    f(3, "status", Ty::Ignored),
];

const TOKEN_REQUEST: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(
        2,
        "spec",
        Ty::Msg(&[
            rep(1, "audiences", Ty::Str),
            f(
                3,
                "boundObjectRef",
                Ty::Msg(&[
                    f(1, "kind", Ty::Str),
                    f(2, "apiVersion", Ty::Str),
                    f(3, "name", Ty::Str),
                    f(4, "uid", Ty::Str),
                ]),
            ),
            f(4, "expirationSeconds", Ty::Int),
        ]),
    ),
    f(3, "status", Ty::Ignored),
];

fn message_of(api_version: &str, kind: &str) -> Option<&'static [Field]> {
    Some(match (api_version, kind) {
        ("v1", "Namespace") => NAMESPACE,
        ("v1", "Secret") => SECRET,
        ("v1", "ConfigMap") => CONFIG_MAP,
        ("v1", "ServiceAccount") => SERVICE_ACCOUNT,
        ("rbac.authorization.k8s.io/v1", "Role") => ROLE,
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => CLUSTER_ROLE,
        ("rbac.authorization.k8s.io/v1", "RoleBinding" | "ClusterRoleBinding") => ROLE_BINDING,
        ("policy/v1", "PodDisruptionBudget") => PDB,
        ("authentication.k8s.io/v1", "TokenRequest") => TOKEN_REQUEST,
        ("apps/v1", "Deployment") => DEPLOYMENT,
        _ => return None,
    })
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ProtobufError {
    #[error("the protobuf body does not start with the k8s envelope")]
    NoEnvelope,
    #[error("the protobuf body is truncated or malformed")]
    Malformed,
    #[error("the emulator does not decode {kind} ({api_version}) from protobuf; send JSON")]
    UnsupportedKind { api_version: String, kind: String },
    #[error("protobuf field {number} of {message} is not known to the emulator")]
    UnknownField { message: String, number: u64 },
}

struct Reader<'a> {
    b: &'a [u8],
}

enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ProtobufError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.b.split_first().ok_or(ProtobufError::Malformed)?;
            self.b = rest;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(ProtobufError::Malformed)
    }

    fn next(&mut self) -> Result<Option<(u64, Wire<'a>)>, ProtobufError> {
        if self.b.is_empty() {
            return Ok(None);
        }
        let tag = self.varint()?;
        let value = match tag & 7 {
            0 => Wire::Varint(self.varint()?),
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| ProtobufError::Malformed)?;
                if n > self.b.len() {
                    return Err(ProtobufError::Malformed);
                }
                let (v, rest) = self.b.split_at(n);
                self.b = rest;
                Wire::Bytes(v)
            }
            _ => return Err(ProtobufError::Malformed),
        };
        Ok(Some((tag >> 3, value)))
    }
}

fn fields(b: &[u8]) -> Result<Vec<(u64, Wire<'_>)>, ProtobufError> {
    let mut r = Reader { b };
    let mut out = Vec::new();
    while let Some(x) = r.next()? {
        out.push(x);
    }
    Ok(out)
}

fn text(b: &[u8]) -> Result<String, ProtobufError> {
    String::from_utf8(b.to_vec()).map_err(|_| ProtobufError::Malformed)
}

fn scalar(ty: Ty, w: &Wire<'_>, message: &str) -> Result<Value, ProtobufError> {
    use base64::Engine as _;
    Ok(match (ty, w) {
        (Ty::Str, Wire::Bytes(b)) => json!(text(b)?),
        (Ty::Bytes, Wire::Bytes(b)) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
        (Ty::Bool, Wire::Varint(v)) => json!(*v != 0),
        (Ty::Flag, Wire::Varint(v)) => json!(*v != 0),
        (Ty::Int | Ty::IntPtr, Wire::Varint(v)) => json!(*v as i64),
        (Ty::Msg(m), Wire::Bytes(b)) => decode_message(m, b, message)?,
        (Ty::Time, Wire::Bytes(b)) => {
            let mut secs = 0i64;
            for (n, w) in fields(b)? {
                if let (1, Wire::Varint(v)) = (n, w) {
                    secs = v as i64;
                }
            }
            if secs == 0 {
                Value::Null
            } else {
                json!(crate::emulator::time::rfc3339(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64)
                ))
            }
        }
        (Ty::IntOrString, Wire::Bytes(b)) => {
            let (mut kind, mut int, mut string) = (0, 0i64, String::new());
            for (n, w) in fields(b)? {
                match (n, w) {
                    (1, Wire::Varint(v)) => kind = v,
                    (2, Wire::Varint(v)) => int = v as i32 as i64,
                    (3, Wire::Bytes(s)) => string = text(s)?,
                    _ => return Err(ProtobufError::Malformed),
                }
            }
            if kind == 1 {
                json!(string)
            } else {
                json!(int)
            }
        }
        _ => return Err(ProtobufError::Malformed),
    })
}

fn decode_message(desc: &[Field], b: &[u8], message: &str) -> Result<Value, ProtobufError> {
    let mut out = Map::new();
    for (n, w) in fields(b)? {
        let Some(&(_, name, ty, repeated)) = desc.iter().find(|d| d.0 == n) else {
            return Err(ProtobufError::UnknownField { message: message.into(), number: n });
        };
        let path = format!("{message}.{name}");
        match ty {
            Ty::Ignored => {}
            Ty::MapStr | Ty::MapBytes | Ty::MapQuantity => {
                let Wire::Bytes(entry) = w else { return Err(ProtobufError::Malformed) };
                let (mut k, mut v) = (String::new(), Value::String(String::new()));
                let value_ty = match ty {
                    Ty::MapStr => Ty::Str,
                    Ty::MapBytes => Ty::Bytes,
                    _ => Ty::Msg(QUANTITY),
                };
                for (en, ew) in fields(entry)? {
                    match (en, &ew) {
                        (1, Wire::Bytes(kb)) => k = text(kb)?,
                        (2, _) => v = scalar(value_ty, &ew, &path)?,
                        _ => return Err(ProtobufError::Malformed),
                    }
                }
                let v = if matches!(ty, Ty::MapQuantity) { v["string"].clone() } else { v };
                out.entry(name).or_insert_with(|| json!({}))[&k] = v;
            }
            _ => {
                let v = scalar(ty, &w, &path)?;
                if repeated {
                    let list = out.entry(name).or_insert_with(|| json!([]));
                    if let Some(a) = list.as_array_mut() {
                        a.push(v);
                    }
                } else if matches!(ty, Ty::Bool | Ty::IntPtr) || !is_empty(&v) {
                    out.insert(name.into(), v);
                }
            }
        }
    }
    Ok(Value::Object(out))
}

/// Go's `omitempty`: proto2 as Kubernetes writes it sends every non-pointer scalar,
/// empty or not; JSON leaves empty ones out.
fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Number(n) => n.as_i64() == Some(0),
        Value::Bool(b) => !b,
        Value::Object(m) => m.is_empty(),
        _ => false,
    }
}

/// Decodes a protobuf request body into the object's JSON form.
pub fn decode(body: &[u8]) -> Result<Value, ProtobufError> {
    let unknown = body.strip_prefix(MAGIC).ok_or(ProtobufError::NoEnvelope)?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    for (n, w) in fields(unknown)? {
        match (n, w) {
            (1, Wire::Bytes(tm)) => {
                for (tn, tw) in fields(tm)? {
                    match (tn, tw) {
                        (1, Wire::Bytes(s)) => api_version = text(s)?,
                        (2, Wire::Bytes(s)) => kind = text(s)?,
                        _ => return Err(ProtobufError::Malformed),
                    }
                }
            }
            (2, Wire::Bytes(r)) => raw = r,
            // contentEncoding / contentType: empty for objects.
            (3 | 4, Wire::Bytes(_)) => {}
            _ => return Err(ProtobufError::Malformed),
        }
    }
    let desc = message_of(&api_version, &kind)
        .ok_or_else(|| ProtobufError::UnsupportedKind { api_version: api_version.clone(), kind: kind.clone() })?;
    let mut obj = decode_message(desc, raw, &kind)?;
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(kind);
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What kubectl 1.33 sends for `kubectl create namespace jobs` (captured).
    const CREATE_NS: &[u8] = b"k8s\x00\n\x0f\n\x02v1\x12\tNamespace\x12\x1c\n\x14\n\x04jobs\x12\x00\x1a\x00\"\x00*\x002\x008\x00B\x00\x12\x00\x1a\x02\n\x00\x1a\x00\"\x00";

    /// `kubectl create deployment d --image=test-runtime:1 --replicas=2 --port=8080 -- sleep 10`
    /// (kubectl 1.33, captured).
    const CREATE_DEPLOYMENT: &[u8] = b"k8s\x00\x0a\x15\x0a\x07apps/v1\x12\x0aDeployment\x12\xcd\x01\x0a\x1b\x0a\x01d\x12\x00\x1a\x00\x22\x00*\x002\x008\x00B\x00Z\x08\x0a\x03app\x12\x01d\x12\x9f\x01\x08\x02\x12\x0a\x0a\x08\x0a\x03app\x12\x01d\x1a\x86\x01\x0a\x1a\x0a\x00\x12\x00\x1a\x00\x22\x00*\x002\x008\x00B\x00Z\x08\x0a\x03app\x12\x01d\x12h\x12J\x0a\x0ctest-runtime\x12\x0etest-runtime:1\x1a\x05sleep\x1a\x0210*\x002\x0b\x0a\x00\x10\x00\x18\x90?\x22\x00*\x00B\x00j\x00r\x00\x80\x01\x00\x88\x01\x00\x90\x01\x00\xa2\x01\x00\x1a\x002\x00B\x00J\x00R\x00X\x00`\x00h\x00\x82\x01\x00\x8a\x01\x00\x9a\x01\x00\xc2\x01\x00\x22\x02\x0a\x00(\x008\x00\x1a\x0c\x08\x00\x10\x00\x18\x00 \x00(\x008\x00\x1a\x00\x22\x00";

    #[test]
    fn a_captured_deployment_decodes_to_what_kubectl_sends_as_json() {
        let d = decode(CREATE_DEPLOYMENT).unwrap();
        assert_eq!(
            d,
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {"app": "d"}},
                "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "d"}},
                    "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": [
                        {"name": "test-runtime", "image": "test-runtime:1", "command": ["sleep", "10"], "ports": [{"containerPort": 8080}]}]}}}})
        );
    }

    #[test]
    fn a_captured_namespace_decodes_to_its_json() {
        assert_eq!(
            decode(CREATE_NS).unwrap(),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "jobs"}})
        );
    }

    fn ld(n: u64, b: &[u8]) -> Vec<u8> {
        let mut out = vec![(n << 3 | 2) as u8, b.len() as u8];
        out.extend_from_slice(b);
        out
    }

    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let tm = [ld(1, api_version.as_bytes()), ld(2, kind.as_bytes())].concat();
        [MAGIC.to_vec(), ld(1, &tm), ld(2, raw), ld(3, b""), ld(4, b"")].concat()
    }

    #[test]
    fn secret_data_is_base64_and_maps_and_bools_decode() {
        let meta = [ld(1, b"s"), ld(11, &[ld(1, b"app").as_slice(), &ld(2, b"x")].concat())].concat();
        let raw = [
            ld(1, &meta),
            ld(2, &[ld(1, b"k").as_slice(), &ld(2, b"\x00\xff")].concat()),
            ld(3, b"Opaque"),
            vec![5 << 3, 1],
        ]
        .concat();
        let v = decode(&envelope("v1", "Secret", &raw)).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "labels": {"app": "x"}},
                "data": {"k": "AP8="}, "type": "Opaque", "immutable": true})
        );
    }

    #[test]
    fn an_unknown_kind_or_field_is_refused_by_name() {
        assert_eq!(
            decode(&envelope("apps/v1", "StatefulSet", b"")).unwrap_err().to_string(),
            "the emulator does not decode StatefulSet (apps/v1) from protobuf; send JSON"
        );
        let raw = ld(9, b"x");
        assert_eq!(
            decode(&envelope("v1", "ConfigMap", &raw)).unwrap_err(),
            ProtobufError::UnknownField { message: "ConfigMap".into(), number: 9 }
        );
        assert_eq!(decode(b"{}").unwrap_err(), ProtobufError::NoEnvelope);
        assert_eq!(decode(b"k8s\x00\n\x05ab").unwrap_err(), ProtobufError::Malformed);
    }
}
