package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/google/go-cmp/cmp"
)

// runMainEnv, when set, makes the test binary run main() itself, so the
// tests below drive the plugin through skel exactly as a runtime does:
// environment variables in, JSON on stdin, result or error on stdout.
const runMainEnv = "WEFT_FLANNEL_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) != "" {
		main()
		return
	}
	os.Exit(m.Run())
}

// upstreamVersions are the spec versions upstream's flannel plugin
// (flannel-io/cni-plugin) declares: it passes containernetworking/cni's
// version.All to skel, which is every version the library implements.
var upstreamVersions = []string{"0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// runPlugin runs main() in a child process with the CNI environment
// variables env and stdin, and returns its stdout, stderr and exit error.
func runPlugin(t *testing.T, stdin string, env ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), runMainEnv+"=1")
	cmd.Env = append(cmd.Env, env...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	return out.String(), errOut.String(), err
}

func TestVersionCommandListsUpstreamVersions(t *testing.T) {
	out, stderr, err := runPlugin(t, "", "CNI_COMMAND=VERSION")
	if err != nil {
		t.Fatalf("VERSION: %v\n%s", err, stderr)
	}
	var got struct {
		CNIVersion        string   `json:"cniVersion"`
		SupportedVersions []string `json:"supportedVersions"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("VERSION output %q: %v", out, err)
	}
	if diff := cmp.Diff(upstreamVersions, got.SupportedVersions); diff != "" {
		t.Errorf("VERSION supportedVersions (-upstream +ours):\n%s", diff)
	}
	if got.CNIVersion != "1.1.0" {
		t.Errorf("VERSION cniVersion = %q, want 1.1.0", got.CNIVersion)
	}
}

func TestAboutListsUpstreamVersions(t *testing.T) {
	_, stderr, _ := runPlugin(t, "", "CNI_COMMAND=")
	want := "CNI protocol versions supported: " + strings.Join(upstreamVersions, ", ")
	if !strings.Contains(stderr, "CNI plugin flannel (weft)") || !strings.Contains(stderr, want) {
		t.Errorf("about text = %q, want it to name the plugin and say %q", stderr, want)
	}
}

// TestEveryUpstreamVersionReachesThePlugin checks that skel lets a
// configuration of each version upstream accepts through to the plugin's
// ADD (which then fails, as no flanneld runs here, with its own "try again
// later" rather than skel's "incompatible CNI versions"). An absent
// cniVersion means 0.1.0 to skel, and upstream accepts it too.
func TestEveryUpstreamVersionReachesThePlugin(t *testing.T) {
	subnetFile := filepath.Join(t.TempDir(), "subnet.env")
	for _, v := range append([]string{""}, upstreamVersions...) {
		t.Run("v"+v, func(t *testing.T) {
			conf := `{"name":"cbr0","type":"flannel","subnetFile":"` + subnetFile + `"`
			if v != "" {
				conf += `,"cniVersion":"` + v + `"`
			}
			conf += "}"
			out, _, err := runPlugin(t, conf, "CNI_COMMAND=ADD", "CNI_CONTAINERID=c1",
				"CNI_NETNS=/run/netns/none", "CNI_IFNAME=eth0", "CNI_PATH=/nonexistent")
			if err == nil {
				t.Fatalf("ADD without a subnet file succeeded: %s", out)
			}
			var e types.Error
			if jerr := json.Unmarshal([]byte(out), &e); jerr != nil {
				t.Fatalf("ADD error output %q: %v", out, jerr)
			}
			if e.Code != types.ErrTryAgainLater || !strings.Contains(e.Msg, "flanneld is not ready") {
				t.Errorf("ADD error = code %d %q, want code %d from the plugin", e.Code, e.Msg, types.ErrTryAgainLater)
			}
		})
	}
}
