package config

import (
	"io"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// Upstream's flag set carries klog's -v, -vmodule and -log_backtrace_at
// (its troubleshooting doc lists exactly these); the other two are
// accepted with klog's syntax and reported as ignored.
func TestParseOptionsKlogFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want []string // Name=Value of the ignored settings
	}{
		{args: []string{"-vmodule=main=2,kube*=4", "-log_backtrace_at=main.go:120"},
			want: []string{"--vmodule=main=2,kube*=4", "--log_backtrace_at=main.go:120"}},
		{args: []string{"--vmodule", "x=0,", "--log_backtrace_at="},
			want: []string{"--vmodule=x=0,", "--log_backtrace_at="}},
		{env: map[string]string{"FLANNELD_VMODULE": "vxlan=3", "FLANNELD_LOG_BACKTRACE_AT": "a.go:1"},
			want: []string{"--vmodule=vxlan=3", "--log_backtrace_at=a.go:1"}},
		{args: []string{"-v=4"}},
		// klog's output flags, as klog-era unit files pass them.
		{args: []string{"--logtostderr", "--alsologtostderr=false", "--log_dir=/var/log/flannel", "--log_file=/tmp/f.log",
			"--log_file_max_size=1800", "--stderrthreshold=WARNING", "--skip_headers", "--one_output=true",
			"--add_dir_header", "--skip_log_headers=false", "--alsologtostderrthreshold=2", "--legacy_stderr_threshold_behavior=false"},
			want: []string{"--logtostderr=true", "--alsologtostderr=false", "--add_dir_header=true", "--skip_headers=true",
				"--skip_log_headers=false", "--one_output=true", "--legacy_stderr_threshold_behavior=false", "--log_dir=/var/log/flannel",
				"--log_file=/tmp/f.log", "--log_file_max_size=1800", "--stderrthreshold=WARNING", "--alsologtostderrthreshold=2"}},
		{env: map[string]string{"FLANNELD_LOGTOSTDERR": "true"}, want: []string{"--logtostderr=true"}},
	} {
		o, err := ParseOptions(tc.args, env(tc.env), io.Discard)
		if err != nil {
			t.Errorf("ParseOptions(%v, %v): %v", tc.args, tc.env, err)
			continue
		}
		var got []string
		for _, ig := range o.Ignored {
			if ig.Reason == "" || ig.Err != nil {
				t.Errorf("ParseOptions(%v, %v): %+v: want a reason and no error", tc.args, tc.env, ig)
			}
			got = append(got, ig.Name+"="+ig.Value)
		}
		if diff := cmp.Diff(tc.want, got, cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("ParseOptions(%v, %v): ignored (-want +got):\n%s", tc.args, tc.env, diff)
		}
	}
}

func TestParseOptionsKlogFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string // in the error
	}{
		{args: []string{"-vmodule=main"}, want: "vmodule"},
		{args: []string{"-vmodule==3"}, want: "vmodule"},
		{args: []string{"-vmodule=main=-1"}, want: "vmodule"},
		{args: []string{"-vmodule=main=x"}, want: "vmodule"},
		{args: []string{"-vmodule=a=1=2"}, want: "vmodule"},
		{args: []string{"-log_backtrace_at=main.go"}, want: "log_backtrace_at"},
		{args: []string{"-log_backtrace_at=main:3"}, want: "log_backtrace_at"},
		{args: []string{"-log_backtrace_at=main.go:0"}, want: "log_backtrace_at"},
		{args: []string{"-log_backtrace_at=a.go:1:2"}, want: "log_backtrace_at"},
		{env: map[string]string{"FLANNELD_VMODULE": "nope"}, want: "FLANNELD_VMODULE"},
		{args: []string{"-v=x"}, want: "-v"},
		// klog's other flags are accepted, but typed as klog types them.
		{args: []string{"--logtostderr=maybe"}, want: "logtostderr"},
		{args: []string{"--log_file_max_size=-1"}, want: "log_file_max_size"},
		{args: []string{"--stderrthreshold=LOUD"}, want: "stderrthreshold"},
		{env: map[string]string{"FLANNELD_ALSOLOGTOSTDERR": "sure"}, want: "FLANNELD_ALSOLOGTOSTDERR"},
	} {
		_, err := ParseOptions(tc.args, env(tc.env), io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseOptions(%v, %v): err = %v, want one naming %s", tc.args, tc.env, err, tc.want)
		}
	}
}

// Upstream's kube subnet manager reads EVENT_QUEUE_DEPTH (and refuses to
// start on a non-integer) and main reads CONT_WHEN_CACHE_NOT_READY; weft
// needs neither, takes any value, and reports them in kube mode only.
func TestParseOptionsKubeEnv(t *testing.T) {
	type note struct {
		Name, Value string
		Bad         bool
	}
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want []note
	}{
		{args: []string{"--kube-subnet-mgr"},
			env:  map[string]string{"EVENT_QUEUE_DEPTH": "5000", "CONT_WHEN_CACHE_NOT_READY": "false"},
			want: []note{{"EVENT_QUEUE_DEPTH", "5000", false}, {"CONT_WHEN_CACHE_NOT_READY", "false", false}}},
		{args: []string{"--kube-subnet-mgr"},
			env:  map[string]string{"EVENT_QUEUE_DEPTH": "lots", "CONT_WHEN_CACHE_NOT_READY": "sure"},
			want: []note{{"EVENT_QUEUE_DEPTH", "lots", true}, {"CONT_WHEN_CACHE_NOT_READY", "sure", true}}},
		{env: map[string]string{"FLANNELD_KUBE_SUBNET_MGR": "true", "CONT_WHEN_CACHE_NOT_READY": "true"},
			want: []note{{"CONT_WHEN_CACHE_NOT_READY", "true", false}}},
		{args: []string{"--kube-subnet-mgr"}},
		// etcd mode: upstream reads neither there.
		{env: map[string]string{"EVENT_QUEUE_DEPTH": "lots", "CONT_WHEN_CACHE_NOT_READY": "true"}},
	} {
		o, err := ParseOptions(tc.args, env(tc.env), io.Discard)
		if err != nil {
			t.Errorf("ParseOptions(%v, %v): %v", tc.args, tc.env, err)
			continue
		}
		var got []note
		for _, ig := range o.Ignored {
			if ig.Reason == "" {
				t.Errorf("%s: no reason", ig.Name)
			}
			got = append(got, note{ig.Name, ig.Value, ig.Err != nil})
		}
		if diff := cmp.Diff(tc.want, got, cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("ParseOptions(%v, %v): ignored (-want +got):\n%s", tc.args, tc.env, diff)
		}
	}
}
