package kubestore

import (
	"fmt"
	"regexp"
	"strings"
)

// Annotations are the node annotation keys flannel reads and writes, all
// under one prefix (--kube-annotation-prefix, by default
// "flannel.alpha.coreos.com"). The names are upstream's: a mixed cluster
// of flanneld and weft hosts, or a rolling replacement of one by the other,
// reads the same keys.
type Annotations struct {
	// SubnetKubeManaged ("kube-subnet-manager") is "true" on nodes whose
	// flannel published its attributes; only those nodes are peers.
	SubnetKubeManaged string
	BackendType       string
	// BackendData and BackendV6Data hold the backend's JSON (for vxlan the
	// VNI and the VTEP MAC of each family's device).
	BackendData   string
	BackendV6Data string
	// PublicIP and PublicIPv6 are the underlay addresses peers send to.
	PublicIP   string
	PublicIPv6 string
	// PublicIPOverwrite and PublicIPv6Overwrite are set by the operator (or
	// flannel-node-annotator) when the address peers must use is not on the
	// host, e.g. behind NAT: flannel publishes it instead of its own.
	PublicIPOverwrite   string
	PublicIPv6Overwrite string
	// NodePublicIP and NodePublicIPv6 are set by the operator to choose
	// the underlay interface at startup, like --public-ip.
	NodePublicIP   string
	NodePublicIPv6 string
	// prefix is what every key above starts with.
	prefix string
}

// prefixPattern is upstream's rule for a finished prefix: a DNS-style name,
// one slash, optionally a name part ending in '-'.
var prefixPattern = regexp.MustCompile(`^(?:[a-z0-9_-]+\.)+[a-z0-9_-]+/(?:[a-z0-9_-]+-)?$`)

// NewAnnotations derives the keys from prefix the way upstream does:
// "example.com" becomes "example.com/kube-subnet-manager", and a prefix
// with a name part, "example.com/net", becomes
// "example.com/net-kube-subnet-manager".
func NewAnnotations(prefix string) (Annotations, error) {
	p := prefix
	switch strings.Count(p, "/") {
	case 0:
		p += "/"
	case 1:
	default:
		return Annotations{}, fmt.Errorf("annotation prefix %q: at most one '/' allowed", prefix)
	}
	if !strings.HasSuffix(p, "/") && !strings.HasSuffix(p, "-") {
		p += "-"
	}
	if !prefixPattern.MatchString(p) {
		return Annotations{}, fmt.Errorf("annotation prefix %q: want a DNS name, optionally followed by /name", prefix)
	}
	return Annotations{
		SubnetKubeManaged:   p + "kube-subnet-manager",
		BackendType:         p + "backend-type",
		BackendData:         p + "backend-data",
		BackendV6Data:       p + "backend-v6-data",
		PublicIP:            p + "public-ip",
		PublicIPv6:          p + "public-ipv6",
		PublicIPOverwrite:   p + "public-ip-overwrite",
		PublicIPv6Overwrite: p + "public-ipv6-overwrite",
		NodePublicIP:        p + "node-public-ip",
		NodePublicIPv6:      p + "node-public-ipv6",
		prefix:              p,
	}, nil
}
