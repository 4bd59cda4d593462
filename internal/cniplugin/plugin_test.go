package cniplugin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/google/go-cmp/cmp"

	"github.com/weft-net/weft/internal/subnetenv"
)

// fakeExec stands in for the delegate executables: it records each call
// and answers ADD with a one-address result in the config's version.
type fakeExec struct {
	version.PluginDecoder
	calls []delegateCall
	fail  map[string]error // by CNI_COMMAND
	// answerIn, if set, is the version ADD answers in whatever the
	// config asked for, as a delegate that ignores cniVersion would.
	answerIn string
}

type delegateCall struct {
	Plugin, Command string
	Conf            map[string]any
}

var _ invoke.Exec = (*fakeExec)(nil)

func (f *fakeExec) FindInPath(plugin string, _ []string) (string, error) {
	return "/fake/" + plugin, nil
}

func (f *fakeExec) ExecPlugin(_ context.Context, path string, stdin []byte, environ []string) ([]byte, error) {
	var command string
	for _, kv := range environ {
		if v, ok := strings.CutPrefix(kv, "CNI_COMMAND="); ok {
			command = v
		}
	}
	var conf map[string]any
	if err := json.Unmarshal(stdin, &conf); err != nil {
		return nil, err
	}
	f.calls = append(f.calls, delegateCall{filepath.Base(path), command, conf})
	if err := f.fail[command]; err != nil {
		return nil, err
	}
	if command != "ADD" {
		return nil, nil
	}
	v, _ := conf["cniVersion"].(string)
	if f.answerIn != "" {
		v = f.answerIn
	}
	if ok, _ := version.GreaterThanOrEqualTo(v, "0.3.0"); !ok {
		return fmt.Appendf(nil, `{"cniVersion":%q,"ip4":{"ip":"10.5.52.2/24","gateway":"10.5.52.1"}}`, v), nil
	}
	return fmt.Appendf(nil, `{"cniVersion":%q,"ips":[{"version":"4","address":"10.5.52.2/24","gateway":"10.5.52.1"}]}`, v), nil
}

func (f *fakeExec) commands() []string {
	var out []string
	for _, c := range f.calls {
		out = append(out, c.Plugin+" "+c.Command)
	}
	return out
}

type fixture struct {
	dir, subnetFile, dataDir string
	exec                     *fakeExec
	out                      bytes.Buffer
	plugin                   Plugin
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	fx := &fixture{
		dir:        dir,
		subnetFile: filepath.Join(dir, "subnet.env"),
		dataDir:    filepath.Join(dir, "data"),
		exec:       &fakeExec{fail: map[string]error{}},
	}
	fx.plugin = Plugin{Exec: fx.exec, Stdout: &fx.out, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	return fx
}

func (fx *fixture) writeEnv(t *testing.T, e subnetenv.Env) {
	t.Helper()
	if err := subnetenv.Write(fx.subnetFile, e); err != nil {
		t.Fatal(err)
	}
}

func (fx *fixture) args(version string, extra string) *skel.CmdArgs {
	conf := fmt.Sprintf(`{"name":"cbr0","cniVersion":%q,"type":"flannel","subnetFile":%q,"dataDir":%q,
		"delegate":{"hairpinMode":true,"isDefaultGateway":true}%s}`, version, fx.subnetFile, fx.dataDir, extra)
	return &skel.CmdArgs{ContainerID: "c1", Netns: "/run/netns/c1", IfName: "eth0", StdinData: []byte(conf)}
}

func (fx *fixture) saved(t *testing.T) map[string]any {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(fx.dataDir, "c1"))
	if err != nil {
		t.Fatal(err)
	}
	var conf map[string]any
	if err := json.Unmarshal(data, &conf); err != nil {
		t.Fatal(err)
	}
	return conf
}

func (fx *fixture) savedExists() bool {
	_, err := os.Stat(filepath.Join(fx.dataDir, "c1"))
	return err == nil
}

func wantCNIError(t *testing.T, err error, code uint, substrings ...string) {
	t.Helper()
	var e *types.Error
	if !errors.As(err, &e) {
		t.Fatalf("error = %v (%T), want a *types.Error", err, err)
	}
	if e.Code != code {
		t.Errorf("error code = %d, want %d (%v)", e.Code, code, e)
	}
	for _, s := range substrings {
		if !strings.Contains(e.Error(), s) {
			t.Errorf("error %q does not mention %q", e.Error(), s)
		}
	}
}

func TestAddSavesThenDelegatesAndConverts(t *testing.T) {
	for _, v := range version.All.SupportedVersions() {
		t.Run(v, func(t *testing.T) {
			fx := newFixture(t)
			fx.writeEnv(t, envV4)
			if err := fx.plugin.Add(fx.args(v, "")); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff([]string{"bridge ADD"}, fx.exec.commands()); diff != "" {
				t.Fatalf("delegate calls (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(fx.saved(t), fx.exec.calls[0].Conf); diff != "" {
				t.Errorf("delegate got a config other than the saved one (-saved +got):\n%s", diff)
			}
			st, err := os.Stat(filepath.Join(fx.dataDir, "c1"))
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != 0o600 {
				t.Errorf("saved config mode = %v, want 0600", st.Mode().Perm())
			}
			res, err := version.NewResult(v, fx.out.Bytes())
			if err != nil {
				t.Fatalf("printed result does not parse as %s: %v\n%s", v, err, fx.out.String())
			}
			if res.Version() != v {
				t.Errorf("result version = %s, want %s", res.Version(), v)
			}
		})
	}
}

// TestEveryVersionConverts runs ADD, CHECK (from 0.4.0) and DEL at every
// version upstream's plugin accepts, with a delegate answering ADD in
// another version than the one asked for: the plugin must print the
// result in the runtime's version, and tell the delegate that version on
// every command.
func TestEveryVersionConverts(t *testing.T) {
	for _, v := range version.All.SupportedVersions() {
		for _, answer := range []string{"0.2.0", "1.1.0"} {
			t.Run(v+"/delegate-answers-"+answer, func(t *testing.T) {
				fx := newFixture(t)
				fx.writeEnv(t, envV4)
				fx.exec.answerIn = answer
				if err := fx.plugin.Add(fx.args(v, "")); err != nil {
					t.Fatal(err)
				}
				var head struct {
					CNIVersion string `json:"cniVersion"`
				}
				if err := json.Unmarshal(fx.out.Bytes(), &head); err != nil || head.CNIVersion != v {
					t.Errorf("printed result version = %q (%v), want %q: %s", head.CNIVersion, err, v, fx.out.String())
				}
				res, err := version.NewResult(v, fx.out.Bytes())
				if err != nil {
					t.Fatalf("printed result does not parse as %s: %v", v, err)
				}
				cur, err := current.NewResultFromResult(res)
				if err != nil || len(cur.IPs) != 1 || cur.IPs[0].Address.String() != "10.5.52.2/24" {
					t.Errorf("printed result lost the address: %v (%v)", fx.out.String(), err)
				}
				want := []string{"bridge ADD"}
				prev := fmt.Sprintf(`,"prevResult":%s`, fx.out.Bytes())
				if ok, _ := version.GreaterThanOrEqualTo(v, "0.4.0"); ok {
					if err := fx.plugin.Check(fx.args(v, prev)); err != nil {
						t.Fatal(err)
					}
					want = append(want, "bridge CHECK")
				}
				if err := fx.plugin.Del(fx.args(v, prev)); err != nil {
					t.Fatal(err)
				}
				want = append(want, "bridge DEL")
				if diff := cmp.Diff(want, fx.exec.commands()); diff != "" {
					t.Fatalf("delegate calls (-want +got):\n%s", diff)
				}
				for _, c := range fx.exec.calls {
					if c.Conf["cniVersion"] != v {
						t.Errorf("delegate %s got cniVersion %v, want %s", c.Command, c.Conf["cniVersion"], v)
					}
				}
				if fx.savedExists() {
					t.Error("saved config not removed by DEL")
				}
			})
		}
	}
}

func TestAddSubnetFileMissing(t *testing.T) {
	fx := newFixture(t)
	err := fx.plugin.Add(fx.args("1.0.0", ""))
	wantCNIError(t, err, types.ErrTryAgainLater, "flanneld is not ready", fx.subnetFile)
	if len(fx.exec.calls) != 0 || fx.savedExists() {
		t.Errorf("plugin acted without a subnet file: calls %v, saved %v", fx.exec.commands(), fx.savedExists())
	}
}

func TestAddSubnetFileIncomplete(t *testing.T) {
	fx := newFixture(t)
	if err := os.WriteFile(fx.subnetFile, []byte("FLANNEL_MTU=1450\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := fx.plugin.Add(fx.args("1.0.0", ""))
	if err == nil || !strings.Contains(err.Error(), "neither FLANNEL_SUBNET") || !strings.Contains(err.Error(), fx.subnetFile) {
		t.Fatalf("Add error = %v", err)
	}
}

func TestAddDelegateFailureReleases(t *testing.T) {
	fx := newFixture(t)
	fx.writeEnv(t, envV4)
	fx.exec.fail["ADD"] = types.NewError(types.ErrInternal, "failed to set bridge addr", "")
	err := fx.plugin.Add(fx.args("1.0.0", ""))
	wantCNIError(t, err, types.ErrInternal, "delegate bridge ADD", "failed to set bridge addr")
	if diff := cmp.Diff([]string{"bridge ADD", "bridge DEL"}, fx.exec.commands()); diff != "" {
		t.Fatalf("delegate calls (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(fx.exec.calls[0].Conf, fx.exec.calls[1].Conf); diff != "" {
		t.Errorf("release used another config (-add +del):\n%s", diff)
	}
	if fx.savedExists() {
		t.Error("saved config left behind after a released failed ADD")
	}
}

func TestAddDelegateFailureKeepsConfigWhenReleaseFails(t *testing.T) {
	fx := newFixture(t)
	fx.writeEnv(t, envV4)
	fx.exec.fail["ADD"] = errors.New("boom")
	fx.exec.fail["DEL"] = errors.New("also boom")
	err := fx.plugin.Add(fx.args("1.0.0", ""))
	if err == nil || !strings.Contains(err.Error(), "delegate bridge ADD: boom") {
		t.Fatalf("Add error = %v", err)
	}
	if !fx.savedExists() {
		t.Error("saved config removed although the release failed; the runtime's DEL needs it")
	}
}

func TestDelReplaysSavedConfig(t *testing.T) {
	fx := newFixture(t)
	fx.writeEnv(t, envV4)
	if err := fx.plugin.Add(fx.args("1.0.0", "")); err != nil {
		t.Fatal(err)
	}
	added := fx.exec.calls[0].Conf
	// flanneld restarts with another lease and MTU: DEL must release the
	// address from the subnet it was allocated in.
	fx.writeEnv(t, withEnv(envV4, func(e *subnetenv.Env) {
		e.Subnet = netip.MustParsePrefix("10.5.99.1/24")
		e.MTU = 1400
	}))
	prev := `,"prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.5.52.2/24"}]}`
	if err := fx.plugin.Del(fx.args("1.0.0", prev)); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"bridge ADD", "bridge DEL"}, fx.exec.commands()); diff != "" {
		t.Fatalf("delegate calls (-want +got):\n%s", diff)
	}
	del := fx.exec.calls[1].Conf
	if del["prevResult"] == nil {
		t.Error("DEL did not pass the runtime's prevResult on")
	}
	delete(del, "prevResult")
	if diff := cmp.Diff(added, del); diff != "" {
		t.Errorf("DEL config differs from ADD's (-add +del):\n%s", diff)
	}
	if fx.savedExists() {
		t.Error("saved config not removed by DEL")
	}
}

func TestDelWithoutSavedConfigRebuilds(t *testing.T) {
	fx := newFixture(t)
	fx.writeEnv(t, envV4)
	if err := fx.plugin.Del(fx.args("0.3.1", "")); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"bridge DEL"}, fx.exec.commands()); diff != "" {
		t.Fatalf("delegate calls (-want +got):\n%s", diff)
	}
	n, _ := ParseNetConf(fx.args("0.3.1", "").StdinData)
	want, _ := BuildDelegate(n, envV4)
	if diff := cmp.Diff(string(marshalIndent(t, want)), string(marshalIndent(t, fx.exec.calls[0].Conf))); diff != "" {
		t.Errorf("rebuilt config (-want +got):\n%s", diff)
	}
}

func TestDelWithNothingSucceeds(t *testing.T) {
	fx := newFixture(t)
	for range 2 {
		if err := fx.plugin.Del(fx.args("1.0.0", "")); err != nil {
			t.Fatal(err)
		}
	}
	if len(fx.exec.calls) != 0 {
		t.Errorf("delegate called with nothing to delete: %v", fx.exec.commands())
	}
}

func TestDelTwice(t *testing.T) {
	fx := newFixture(t)
	fx.writeEnv(t, envV4)
	if err := fx.plugin.Add(fx.args("1.0.0", "")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(fx.subnetFile); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := fx.plugin.Del(fx.args("1.0.0", "")); err != nil {
			t.Fatal(err)
		}
	}
	if diff := cmp.Diff([]string{"bridge ADD", "bridge DEL"}, fx.exec.commands()); diff != "" {
		t.Fatalf("delegate calls (-want +got):\n%s", diff)
	}
}

func TestDelDelegateFailureKeepsConfig(t *testing.T) {
	fx := newFixture(t)
	fx.writeEnv(t, envV4)
	if err := fx.plugin.Add(fx.args("1.0.0", "")); err != nil {
		t.Fatal(err)
	}
	fx.exec.fail["DEL"] = types.NewError(types.ErrTryAgainLater, "busy", "")
	err := fx.plugin.Del(fx.args("1.0.0", ""))
	wantCNIError(t, err, types.ErrTryAgainLater, "delegate bridge DEL", "busy")
	if !fx.savedExists() {
		t.Error("saved config removed by a failed DEL; the retry needs it")
	}
}

func TestDelCorruptSavedConfigFallsBack(t *testing.T) {
	fx := newFixture(t)
	fx.writeEnv(t, envV4)
	if err := os.MkdirAll(fx.dataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(fx.dataDir, "c1"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := fx.plugin.Del(fx.args("1.0.0", "")); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"bridge DEL"}, fx.exec.commands()); diff != "" {
		t.Fatalf("delegate calls (-want +got):\n%s", diff)
	}
	if fx.savedExists() {
		t.Error("corrupt saved config not removed")
	}
}

func TestCheck(t *testing.T) {
	fx := newFixture(t)
	fx.writeEnv(t, envV4)
	prev := `,"prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.5.52.2/24"}]}`

	err := fx.plugin.Check(fx.args("1.0.0", prev))
	if err == nil || !strings.Contains(err.Error(), "no saved delegate config") {
		t.Fatalf("CHECK before ADD: error = %v", err)
	}
	if err := fx.plugin.Add(fx.args("1.0.0", "")); err != nil {
		t.Fatal(err)
	}
	wantCNIError(t, fx.plugin.Check(fx.args("1.0.0", "")), types.ErrInvalidNetworkConfig, "prevResult")
	if err := fx.plugin.Check(fx.args("1.0.0", prev)); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"bridge ADD", "bridge CHECK"}, fx.exec.commands()); diff != "" {
		t.Fatalf("delegate calls (-want +got):\n%s", diff)
	}
	if fx.exec.calls[1].Conf["prevResult"] == nil {
		t.Error("CHECK did not pass prevResult on")
	}
	fx.exec.fail["CHECK"] = errors.New("bridge cni0 has no address 10.5.52.1")
	if err := fx.plugin.Check(fx.args("1.0.0", prev)); err == nil || !strings.Contains(err.Error(), "delegate bridge CHECK") {
		t.Fatalf("failing CHECK: error = %v", err)
	}
}

func TestStatus(t *testing.T) {
	fx := newFixture(t)
	args := fx.args("1.1.0", "")
	wantCNIError(t, fx.plugin.Status(args), types.ErrPluginNotAvailable, "flanneld is not ready", fx.subnetFile)
	fx.writeEnv(t, envDual)
	if err := fx.plugin.Status(args); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(fx.subnetFile, []byte("FLANNEL_SUBNET=bogus\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := fx.plugin.Status(args); err == nil || !strings.Contains(err.Error(), "FLANNEL_SUBNET") {
		t.Fatalf("Status with a bad file: error = %v", err)
	}
}

func TestInvalidNetConfIsCNIError(t *testing.T) {
	fx := newFixture(t)
	args := &skel.CmdArgs{ContainerID: "c1", IfName: "eth0", StdinData: []byte(`{"name":"x","delegate":{"name":"y"}}`)}
	for name, f := range map[string]func(*skel.CmdArgs) error{
		"add": fx.plugin.Add, "del": fx.plugin.Del, "check": fx.plugin.Check, "status": fx.plugin.Status,
	} {
		t.Run(name, func(t *testing.T) {
			wantCNIError(t, f(args), types.ErrInvalidNetworkConfig, `must not set "name"`)
		})
	}
}

func TestSavedConfigPathRejectsTraversal(t *testing.T) {
	for _, id := range []string{"", ".", "..", "../x", "a/b", `a\b`} {
		if _, err := savedConfigPath("/d", id); err == nil {
			t.Errorf("savedConfigPath accepted container ID %q", id)
		}
	}
}
