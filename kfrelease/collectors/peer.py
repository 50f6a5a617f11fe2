"""Who sent a request inside the mesh: the direct peer's principal, as the receiving pod's Istio sidecar passes it on
(the feedback service's label sources, the log sink's writers)."""

from __future__ import annotations

#: The header Istio's sidecar sets on every request it lets into the pod: its inbound HTTP connection manager
#: appends the mTLS peer's certificate details, URI SAN included (``forward_client_cert_details: APPEND_FORWARD``,
#: ``set_current_client_cert_details: {subject, uri, dns}``: istio/istio ``pilot/pkg/networking/core``
#: ``buildSidecarInboundHTTPOpts``). The last element is the direct peer's, which the sidecar itself wrote.
XFCC_HEADER = "x-forwarded-client-cert"


def peer_principal(xfcc: str | None) -> str | None:
    """The direct peer's mesh principal (``<trust domain>/ns/<ns>/sa/<sa>``) from the last element of an
    ``x-forwarded-client-cert`` header (``By=...;Hash=...;Subject="";URI=spiffe://<principal>``), else None."""
    if not xfcc:
        return None
    last = xfcc.split(",")[-1]
    for part in last.split(";"):
        key, _, value = part.strip().partition("=")
        if key.lower() == "uri" and value.strip('"').startswith("spiffe://"):
            return value.strip('"')[len("spiffe://") :]
    return None
