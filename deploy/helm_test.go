// Package deploy holds no code: its tests check deploy/'s files, the
// manifest, the Helm chart (rendered by a real helm, built from the module
// proxy by tools/helm/build.sh) and the version they share.
package deploy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/yaml"

	"github.com/weft-net/weft/internal/tooltest"
)

const (
	chartDir  = "chart/kube-flannel"
	manifest  = "kube-flannel.yml"
	namespace = "kube-flannel"
)

// helmBinary finds helm: $WEFT_HELM, else the cache path
// tools/helm/build.sh prints, else it runs that script (CI fails instead).
func helmBinary(t *testing.T) string {
	t.Helper()
	return tooltest.Binary(t, tooltest.Tool{Name: "helm", Module: "helm.sh/helm/v3", Env: "WEFT_HELM", ColdBuild: "several minutes"})
}

// helm runs helm with its own empty config, cache and data directories,
// so that nothing of the user's (repositories, plugins) plays a part.
func helm(t *testing.T, args ...string) string {
	t.Helper()
	bin := helmBinary(t)
	home := t.TempDir()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(),
		"HELM_CONFIG_HOME="+home+"/config", "HELM_CACHE_HOME="+home+"/cache", "HELM_DATA_HOME="+home+"/data")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("helm %s: %v\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// render runs helm template on the chart, with extra arguments (-f, --set).
func render(t *testing.T, extra ...string) objects {
	t.Helper()
	args := append([]string{"template", "flannel", chartDir, "--namespace", namespace}, extra...)
	return parseObjects(t, []byte(helm(t, args...)))
}

// object is a decoded Kubernetes object; numbers are float64, as JSON's.
type object = map[string]any

// objects are keyed "Kind namespace/name" (no namespace: "Kind name").
type objects map[string]object

func parseObjects(t *testing.T, data []byte) objects {
	t.Helper()
	out := objects{}
	dec := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for {
		var o object
		err := dec.Decode(&o)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("parse: %v\n%s", err, data)
		}
		if o == nil {
			continue // an empty document
		}
		md, _ := o["metadata"].(map[string]any)
		key := fmt.Sprintf("%v %v", o["kind"], md["name"])
		if ns, ok := md["namespace"]; ok {
			key = fmt.Sprintf("%v %v/%v", o["kind"], ns, md["name"])
		}
		if _, dup := out[key]; dup {
			t.Fatalf("two objects %s", key)
		}
		out[key] = o
	}
}

// typed converts a decoded object into its API type.
func typed[T any](t *testing.T, o object) *T {
	t.Helper()
	if o == nil {
		t.Fatalf("no object to convert to %T", *new(T))
	}
	b, err := json.Marshal(o)
	if err != nil {
		t.Fatal(err)
	}
	v := new(T)
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%v as %T: %v", o["kind"], *v, err)
	}
	return v
}
