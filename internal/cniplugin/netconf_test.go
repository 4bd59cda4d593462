package cniplugin

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestParseNetConfDefaults(t *testing.T) {
	n, err := ParseNetConf([]byte(kubeFlannelConf))
	if err != nil {
		t.Fatal(err)
	}
	if n.SubnetFile != DefaultSubnetFile || n.DataDir != DefaultDataDir {
		t.Errorf("paths = %q, %q; want the defaults", n.SubnetFile, n.DataDir)
	}
	if n.delegateType() != "bridge" {
		t.Errorf("delegate type = %q, want bridge", n.delegateType())
	}

	n, err = ParseNetConf([]byte(`{"name":"x","subnetFile":"/s","dataDir":"/d","delegate":{"type":"macvlan"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if n.SubnetFile != "/s" || n.DataDir != "/d" || n.delegateType() != "macvlan" {
		t.Errorf("got %q, %q, %q", n.SubnetFile, n.DataDir, n.delegateType())
	}
}

func TestParseNetConfErrors(t *testing.T) {
	tests := []struct{ name, conf, want string }{
		{"not json", `{`, "parse flannel net conf"},
		{"no name", `{"type":"flannel"}`, `"name" is missing`},
		{"delegate type not a string", `{"name":"x","delegate":{"type":3}}`, `"delegate.type"`},
		{"delegate type empty", `{"name":"x","delegate":{"type":""}}`, `"delegate.type"`},
		{"delegate sets name", `{"name":"x","delegate":{"name":"y"}}`, `must not set "name"`},
		// Upstream's documented place for IPAM settings is the top-level
		// "ipam"; the error says so.
		{"delegate sets ipam", `{"name":"x","delegate":{"ipam":{}}}`, `top-level "ipam"`},
		{"ipam type not a string", `{"name":"x","ipam":{"type":false}}`, `"ipam.type"`},
		{"delegate not an object", `{"name":"x","delegate":[]}`, "parse flannel net conf"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseNetConf([]byte(tt.conf))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("ParseNetConf error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

// FuzzParseNetConf checks that no input panics the parser or the
// delegate builder, and that whatever they accept becomes a delegate
// configuration with the fields the plugin promises to set.
func FuzzParseNetConf(f *testing.F) {
	for _, s := range []string{
		kubeFlannelConf,
		`{"name":"mynet","type":"flannel"}`,
		`{"name":"x","cniVersion":"1.0.0","subnetFile":"/s","dataDir":"/d","delegate":{"type":"ipvlan","master":"eth0","mtu":1400}}`,
		`{"name":"x","ipam":{"type":"host-local","routes":[{"dst":"10.96.0.0/12"},{"dst":"10.5.0.0/16"}],"dataDir":"/x"}}`,
		`{"name":"x","ipam":{"routes":[{"dst":"::/0","gw":"fe80::1"}]},"runtimeConfig":{"portMappings":[]}}`,
		`{"name":"x","prevResult":{"cniVersion":"1.0.0","ips":[]}}`,
		`{"name":"x","delegate":{"ipam":{}}}`,
		`{"name":"x","ipam":{"routes":[{"dst":1}]}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		n, err := ParseNetConf(data)
		if err != nil {
			return
		}
		if n.Name == "" || n.SubnetFile == "" || n.DataDir == "" {
			t.Fatalf("accepted conf without name or paths: %+v", n)
		}
		d, err := BuildDelegate(n, envDual)
		if err != nil {
			return
		}
		b, err := json.Marshal(d)
		if err != nil {
			t.Fatalf("delegate config does not encode: %v", err)
		}
		var back struct {
			Name string `json:"name"`
			Type string `json:"type"`
			IPAM struct {
				Ranges [][]struct {
					Subnet string `json:"subnet"`
				} `json:"ranges"`
			} `json:"ipam"`
		}
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatalf("delegate config does not decode: %v\n%s", err, b)
		}
		if back.Name != n.Name || back.Type == "" {
			t.Fatalf("delegate name/type = %q/%q, conf name %q", back.Name, back.Type, n.Name)
		}
		if r := back.IPAM.Ranges; len(r) != 2 || r[0][0].Subnet != "10.5.52.0/24" || r[1][0].Subnet != "fc00:5:0:34::/64" {
			t.Fatalf("ranges = %+v", r)
		}
	})
}

// FuzzDecodeSaved: a saved delegate configuration (a file under dataDir,
// read back at DEL) is accepted only with a delegate type, and replaying
// it for a request gives a JSON document for that delegate with the
// request's version, prevResult and runtimeConfig.
func FuzzDecodeSaved(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"0.3.1","name":"cbr0","type":"bridge","ipam":{"type":"host-local"}}`), "1.0.0", []byte(`{"cniVersion":"1.0.0","ips":[]}`))
	f.Add([]byte(`{"type":""}`), "", []byte(nil))
	f.Add([]byte(`{"type":"bridge","prevResult":7,"runtimeConfig":{"x":1}}`), "0.4.0", []byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte, version string, prev []byte) {
		conf, err := decodeSaved(data)
		if err != nil {
			return
		}
		typ, _ := conf["type"].(string)
		if typ == "" {
			t.Fatalf("%q accepted without a type", data)
		}
		if !json.Valid(prev) {
			prev = nil
		}
		if !utf8.ValidString(version) {
			return // ParseNetConf's versions are JSON strings
		}
		n := NetConf{CNIVersion: version, PrevResult: prev, RuntimeConfig: map[string]any{"portMappings": []any{}}}
		out, gotType, err := replayConfig(conf, n)
		if err != nil {
			return // a value JSON cannot hold (none come from a decoded document)
		}
		var back map[string]any
		if err := json.Unmarshal(out, &back); err != nil || gotType != typ || back["type"] != typ || back["cniVersion"] != version {
			t.Fatalf("replay of %q: %s (type %q), %v", data, out, gotType, err)
		}
		if _, ok := back["prevResult"]; ok != (len(prev) > 0) {
			t.Fatalf("replay of %q with prevResult %q: %s", data, prev, out)
		}
	})
}
