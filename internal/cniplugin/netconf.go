package cniplugin

import (
	"encoding/json"
	"errors"
	"fmt"
)

// Defaults of the net conf's optional paths; upstream's, so that existing
// configurations and saved delegate files keep working.
const (
	DefaultSubnetFile = "/run/flannel/subnet.env"
	DefaultDataDir    = "/var/lib/cni/flannel"
)

// NetConf is the flannel plugin's network configuration, as the runtime
// passes it on stdin.
type NetConf struct {
	CNIVersion string `json:"cniVersion,omitempty"`
	Name       string `json:"name"`
	Type       string `json:"type"`

	// SubnetFile is the subnet.env written by flanneld (--subnet-file).
	SubnetFile string `json:"subnetFile,omitempty"`
	// DataDir holds one saved delegate configuration per container.
	DataDir string `json:"dataDir,omitempty"`
	// Delegate is the base of the delegate plugin's configuration; see the
	// package documentation for which fields the plugin fills in.
	Delegate map[string]any `json:"delegate,omitempty"`
	// IPAM is the base of the delegate's "ipam" section: the plugin sets
	// its ranges, appends the cluster routes and defaults its type to
	// host-local, and passes every other field through.
	IPAM map[string]any `json:"ipam,omitempty"`
	// RuntimeConfig is what the runtime injected for the capabilities the
	// conflist declares; it is handed to the delegate unchanged.
	RuntimeConfig map[string]any `json:"runtimeConfig,omitempty"`
	// PrevResult is the runtime's previous result (CHECK, and DEL for
	// spec 0.4.0 and later), kept raw because it is only passed on.
	PrevResult json.RawMessage `json:"prevResult,omitempty"`
}

// ParseNetConf decodes and validates the plugin's configuration and fills
// in the default paths.
func ParseNetConf(data []byte) (NetConf, error) {
	var n NetConf
	if err := json.Unmarshal(data, &n); err != nil {
		return NetConf{}, fmt.Errorf("parse flannel net conf: %w", err)
	}
	if n.SubnetFile == "" {
		n.SubnetFile = DefaultSubnetFile
	}
	if n.DataDir == "" {
		n.DataDir = DefaultDataDir
	}
	if err := n.validate(); err != nil {
		return NetConf{}, fmt.Errorf("flannel net conf: %w", err)
	}
	return n, nil
}

// validate rejects delegate maps the merge would silently override or
// could not use, with messages that say where the setting belongs.
func (n NetConf) validate() error {
	if n.Name == "" {
		return errors.New(`"name" is missing`)
	}
	if t, ok := n.Delegate["type"]; ok {
		if s, isString := t.(string); !isString || s == "" {
			return errors.New(`"delegate.type", if present, must be a non-empty string`)
		}
	}
	if _, ok := n.Delegate["name"]; ok {
		return errors.New(`"delegate" must not set "name": the plugin sets it to the network's name`)
	}
	if _, ok := n.Delegate["ipam"]; ok {
		return errors.New(`"delegate" must not set "ipam": put IPAM settings in the top-level "ipam", which the plugin completes with the node's subnet and routes`)
	}
	if t, ok := n.IPAM["type"]; ok {
		if s, isString := t.(string); !isString || s == "" {
			return errors.New(`"ipam.type", if present, must be a non-empty string`)
		}
	}
	return nil
}

// delegateType is the delegate plugin's type: the delegate map's, else bridge.
func (n NetConf) delegateType() string {
	if t, ok := n.Delegate["type"].(string); ok && t != "" {
		return t
	}
	return "bridge"
}
