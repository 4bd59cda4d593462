package tooltest

import (
	"os"
	"path/filepath"
	"testing"
)

// The cache path must be the one tools/*/build.sh prints.
func TestCachePath(t *testing.T) {
	dir := t.TempDir()
	mod := "module x\n\ngo 1.26\n\nrequire (\n\thelm.sh/helm/v3 v3.22.0 // indirect\n\tk8s.io/kubernetes v1.34.4\n)\n"
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte(mod), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("WEFT_CACHE_DIR", "/c")
	for _, tc := range []struct {
		tool Tool
		want string
	}{
		{Tool{Name: "helm", Module: "helm.sh/helm/v3"}, "/c/helm-v3.22.0/helm"},
		{Tool{Name: "kube-apiserver", Module: "k8s.io/kubernetes"}, "/c/kube-apiserver-v1.34.4/kube-apiserver"},
	} {
		got, err := cachePath(tc.tool, dir)
		if err != nil || got != tc.want {
			t.Errorf("cachePath(%s) = %q, %v; want %q", tc.tool.Name, got, err, tc.want)
		}
	}
	t.Setenv("WEFT_CACHE_DIR", "")
	t.Setenv("XDG_CACHE_HOME", "/x")
	if got, _ := cachePath(Tool{Name: "helm", Module: "helm.sh/helm/v3"}, dir); got != "/x/weft/helm-v3.22.0/helm" {
		t.Errorf("under XDG_CACHE_HOME: %q", got)
	}
	if _, err := cachePath(Tool{Name: "nope", Module: "example.com/nope"}, dir); err == nil {
		t.Error("a missing requirement gave no error")
	}
}

// An explicit binary wins over the cache and the build.
func TestBinaryFromEnv(t *testing.T) {
	p := filepath.Join(t.TempDir(), "tool")
	if err := os.WriteFile(p, nil, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("WEFT_TEST_TOOL", p)
	if got := Binary(t, Tool{Name: "no-such-tool", Module: "example.com/x", Env: "WEFT_TEST_TOOL"}); got != p {
		t.Errorf("Binary = %q; want %q", got, p)
	}
}
