import json, sys, os, re
src = sys.argv[1]; dst = sys.argv[2]
kinds = ["pod-v1","secret-v1","service-v1","configmap-v1","event-v1","event-events-v1","job-batch-v1","deployment-apps-v1","horizontalpodautoscaler-autoscaling-v2","networkpolicy-networking-v1","lease-coordination-v1","customresourcedefinition-apiextensions-v1","resourcequota-v1","namespace-v1","serviceaccount-v1","role-rbac-v1","rolebinding-rbac-v1","clusterrole-rbac-v1","clusterrolebinding-rbac-v1","poddisruptionbudget-policy-v1","persistentvolumeclaim-v1","scale-autoscaling-v1"]
defs = json.load(open(os.path.join(src,"_definitions.json")))["$defs"]
keys=set()
def strip(o, inprops=False):
    if isinstance(o, dict):
        out={}
        for k,v in o.items():
            if not inprops and k=="description" and isinstance(v,str): continue
            if not inprops and k=="$ref" and isinstance(v,str):
                name=v.split("#/$defs/")[1]
                if name not in keys:
                    keys.add(name); 
                    strip(defs[name])
                out[k]="#/$defs/"+name
                continue
            if not inprops and k.startswith("x-kubernetes-") and k not in ("x-kubernetes-int-or-string","x-kubernetes-preserve-unknown-fields"): 
                continue
            out[k]=strip(v, (not inprops) and k=="properties")
        return out
    if isinstance(o, list): return [strip(x) for x in o]
    return o
out={}
for k in kinds:
    out[k]=strip(json.load(open(os.path.join(src,k+".json"))))
done=set()
alldefs={}
while True:
    pending=[k for k in keys if k not in done]
    if not pending: break
    for k in pending:
        alldefs[k]=strip(defs[k]); done.add(k)
json.dump({"kinds":out,"$defs":dict(sorted(alldefs.items()))}, open(dst,"w"), separators=(",",":"), sort_keys=True)
kw=set()
def walk(o):
    if isinstance(o,dict):
        for k,v in o.items():
            if k!="properties": kw.add(k)
            if k=="properties":
                for vv in v.values(): walk(vv)
            else: walk(v)
    elif isinstance(o,list):
        for x in o: walk(x)
walk(out); walk(alldefs); print(sorted(kw))
