// Package deploy holds modgate's deployment files: the container image,
// Kubernetes manifests, a compose file for a laptop, and service units.
// Its tests check that each file parses strictly and wires modgate the
// way the manifests' comments say.
package deploy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"io/fs"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/kustomize/api/krusty"
	kusttypes "sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	sigsyaml "sigs.k8s.io/yaml"
)

// ---- Dockerfile ----

// instruction is one Dockerfile instruction with its continuation lines
// joined.
type instruction struct {
	cmd, args string
	line      int
}

// parseDockerfile splits a Dockerfile into instructions, dropping comments
// and joining lines that end in a backslash.
func parseDockerfile(t *testing.T, data []byte) []instruction {
	t.Helper()
	var out []instruction
	var cur strings.Builder
	start := 0
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "#") || (line == "" && cur.Len() == 0) {
			continue
		}
		if cur.Len() == 0 {
			start = n
		}
		cont := strings.HasSuffix(line, "\\")
		cur.WriteString(strings.TrimSuffix(line, "\\"))
		cur.WriteByte(' ')
		if cont {
			continue
		}
		cmd, args, _ := strings.Cut(strings.TrimSpace(cur.String()), " ")
		out = append(out, instruction{cmd: strings.ToUpper(cmd), args: strings.Join(strings.Fields(args), " "), line: start})
		cur.Reset()
	}
	return out
}

func TestDockerfile(t *testing.T) {
	data, err := os.ReadFile("docker/Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	ins := parseDockerfile(t, data)
	var stages [][]instruction
	args := map[string]string{}
	for _, in := range ins {
		switch {
		case in.cmd == "FROM":
			stages = append(stages, nil)
		case in.cmd == "ARG" && len(stages) == 0:
			k, v, _ := strings.Cut(in.args, "=")
			args[k] = v
			continue
		}
		if len(stages) == 0 {
			t.Fatalf("line %d: %s before FROM", in.line, in.cmd)
		}
		stages[len(stages)-1] = append(stages[len(stages)-1], in)
	}
	if len(stages) != 2 {
		t.Fatalf("%d stages, want 2 (builder and final)", len(stages))
	}
	build, final := stages[0], stages[1]

	from := strings.ReplaceAll(build[0].args, "${GO_VERSION}", args["GO_VERSION"])
	if from != "golang:1.26 AS build" {
		t.Errorf("builder: FROM %s, want golang:1.26 AS build", from)
	}
	var buildCmd string
	for _, in := range build {
		if in.cmd == "RUN" && strings.Contains(in.args, "go build") {
			buildCmd = in.args
		}
	}
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", `-tags "${TAGS}"`, `-ldflags "-s -w -X github.com/modgate/modgate/cmd/modgate/internal/cli.version=${VERSION}`,
		`-X 'github.com/modgate/modgate/cmd/modgate/internal/cli.builtinSumDBKeys=${keys}'"`, "./cmd/modgate"} {
		if !strings.Contains(buildCmd, want) {
			t.Errorf("go build lacks %s: %s", want, buildCmd)
		}
	}
	// The -X target must exist, or the version is silently not stamped.
	cli, err := os.ReadFile("../cmd/modgate/internal/cli/cli.go")
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^var version = ""`).Match(cli) {
		t.Error(`cli.go has no "var version = """: the -X flag stamps nothing`)
	}
	load, err := os.ReadFile("../cmd/modgate/internal/cli/load.go")
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^var builtinSumDBKeys string`).Match(load) {
		t.Error(`load.go has no "var builtinSumDBKeys string": the -X flag stamps nothing`)
	}

	if !strings.HasPrefix(final[0].args, "gcr.io/distroless/static") || !strings.HasSuffix(final[0].args, ":nonroot") {
		t.Errorf("final stage: FROM %s, want distroless static nonroot", final[0].args)
	}
	got := map[string][]string{}
	for _, in := range final[1:] {
		got[in.cmd] = append(got[in.cmd], in.args)
		switch in.cmd {
		case "RUN", "VOLUME", "ADD":
			// Nothing may be written into the image at run time either;
			// a VOLUME would make anonymous volumes behind the user's back.
			t.Errorf("final stage has %s %s", in.cmd, in.args)
		}
	}
	if !slices.Equal(got["USER"], []string{"65532:65532"}) {
		t.Errorf("USER %q, want 65532:65532", got["USER"])
	}
	if len(got["EXPOSE"]) != 1 || !slices.Equal(strings.Fields(got["EXPOSE"][0]), []string{"7070", "7071"}) {
		t.Errorf("EXPOSE %q, want 7070 7071", got["EXPOSE"])
	}
	if len(got["ENTRYPOINT"]) != 1 {
		t.Fatalf("ENTRYPOINT %q", got["ENTRYPOINT"])
	}
	var entry []string
	if err := json.Unmarshal([]byte(got["ENTRYPOINT"][0]), &entry); err != nil {
		t.Fatalf("ENTRYPOINT is not the exec (JSON) form, so signals would go to a shell: %v", err)
	}
	if want := []string{"/usr/local/bin/modgate", "run", "--listen", "0.0.0.0:7070", "--admin", "0.0.0.0:7071"}; !slices.Equal(entry, want) {
		t.Errorf("ENTRYPOINT %q, want %q", entry, want)
	}
	if len(got["COPY"]) != 1 || !strings.Contains(got["COPY"][0], "--from=build /out/modgate /usr/local/bin/modgate") {
		t.Errorf("final stage COPY %q: want only the binary", got["COPY"])
	}
}

// ---- Kubernetes ----

// manifest is one document of a YAML file under k8s/.
type manifest struct {
	file string
	kind string
	obj  any
}

// decodeStrict decodes one YAML document into out, refusing unknown
// fields, as the API server's strict field validation does.
func decodeStrict(doc []byte, out any) error {
	return sigsyaml.UnmarshalStrict(doc, out)
}

// splitDocs splits a multi-document YAML file.
func splitDocs(t *testing.T, data []byte) [][]byte {
	t.Helper()
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var docs [][]byte
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(bytes.TrimSpace(doc)) > 0 {
			docs = append(docs, doc)
		}
	}
}

// decodeManifest decodes a document by its kind into the matching type.
func decodeManifest(t *testing.T, file string, doc []byte) manifest {
	t.Helper()
	var tm struct {
		Kind string `json:"kind"`
	}
	if err := sigsyaml.Unmarshal(doc, &tm); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	var obj any
	switch tm.Kind {
	case "Kustomization":
		obj = &kusttypes.Kustomization{}
	case "Job":
		obj = &batchv1.Job{}
	case "ConfigMap":
		obj = &corev1.ConfigMap{}
	case "Secret":
		obj = &corev1.Secret{}
	case "Deployment":
		obj = &appsv1.Deployment{}
	case "Service":
		obj = &corev1.Service{}
	case "NetworkPolicy":
		obj = &networkingv1.NetworkPolicy{}
	default:
		t.Fatalf("%s: kind %q: add it to decodeManifest", file, tm.Kind)
	}
	if err := decodeStrict(doc, obj); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return manifest{file: file, kind: tm.Kind, obj: obj}
}

func loadManifests(t *testing.T) []manifest {
	t.Helper()
	var out []manifest
	err := filepath.WalkDir("k8s", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".yaml") {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, doc := range splitDocs(t, data) {
			out = append(out, decodeManifest(t, filepath.ToSlash(p), doc))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestKubernetesManifestsDecodeStrictly(t *testing.T) {
	ms := loadManifests(t)
	files := map[string]string{}
	for _, m := range ms {
		files[m.file] = m.kind
	}
	for file, kind := range map[string]string{
		"k8s/base/kustomization.yaml":            "Kustomization",
		"k8s/base/configmap.yaml":                "ConfigMap",
		"k8s/base/job.yaml":                      "Job",
		"k8s/overlays/otel/kustomization.yaml":   "Kustomization",
		"k8s/overlays/otel/modgate-otel.yaml":    "Job",
		"k8s/examples/job.yaml":                  "Job",
		"k8s/overlays/fleet/kustomization.yaml":  "Kustomization",
		"k8s/overlays/fleet/modgate-config.yaml": "ConfigMap",
		"k8s/overlays/fleet/modgate-fleet.yaml":  "Job",
		"k8s/overlays/fleet/secret.example.yaml": "Secret",
	} {
		if files[file] != kind {
			t.Errorf("%s: kind %q, want %q", file, files[file], kind)
		}
	}
	// Strictness is real: a misspelt field fails.
	bad := []byte("apiVersion: batch/v1\nkind: Job\nspec:\n  template:\n    spec:\n      initContainers:\n        - name: modgate\n          restartPolicyy: Always\n")
	if err := decodeStrict(bad, &batchv1.Job{}); err == nil || !strings.Contains(err.Error(), "restartPolicyy") {
		t.Errorf("strict decode accepted an unknown field: %v", err)
	}
}

func readJob(t *testing.T, file string) *batchv1.Job {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return decodeManifest(t, file, data).obj.(*batchv1.Job)
}

func readConfigMap(t *testing.T) *corev1.ConfigMap {
	t.Helper()
	data, err := os.ReadFile("k8s/base/configmap.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return decodeManifest(t, "k8s/base/configmap.yaml", data).obj.(*corev1.ConfigMap)
}

func containerNames(cs []corev1.Container) []string {
	var names []string
	for _, c := range cs {
		names = append(names, c.Name)
	}
	return names
}

func envOf(c corev1.Container) map[string]corev1.EnvVar {
	m := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		m[e.Name] = e
	}
	return m
}

// portOf resolves a probe's port, by number or by the container's port name.
func portOf(c corev1.Container, p intstr.IntOrString) int32 {
	if p.Type == intstr.Int {
		return p.IntVal
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return cp.ContainerPort
		}
	}
	return 0
}

// checkHardened checks a container's securityContext.
func checkHardened(t *testing.T, where string, sc *corev1.SecurityContext) {
	t.Helper()
	switch {
	case sc == nil:
		t.Errorf("%s: no securityContext", where)
	case sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot:
		t.Errorf("%s: runAsNonRoot not true", where)
	case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
		t.Errorf("%s: readOnlyRootFilesystem not true", where)
	case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
		t.Errorf("%s: allowPrivilegeEscalation not false", where)
	case sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0:
		t.Errorf("%s: capabilities %+v, want drop [ALL]", where, sc.Capabilities)
	case sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault:
		t.Errorf("%s: seccompProfile %+v, want RuntimeDefault", where, sc.SeccompProfile)
	}
}

// checkBuildPod checks the wiring that every build pod must have.
func checkBuildPod(t *testing.T, file string, spec corev1.PodSpec) {
	t.Helper()
	i := slices.IndexFunc(spec.InitContainers, func(c corev1.Container) bool { return c.Name == "modgate" })
	if i < 0 {
		t.Fatalf("%s: no modgate init container", file)
	}
	mg := spec.InitContainers[i]
	// modgate-ca makes the CA before modgate starts, in the directory
	// modgate reads it from; every other init container runs after
	// modgate, so it can use it.
	if i != 1 || spec.InitContainers[0].Name != "modgate-ca" {
		t.Errorf("%s: init containers %v, want modgate-ca then modgate first", file, containerNames(spec.InitContainers))
	} else if ca := spec.InitContainers[0]; envOf(ca)["MODGATE_CA_DIR"].Value != envOf(mg)["MODGATE_CA_DIR"].Value ||
		!slices.Equal(ca.Command, []string{"/usr/local/bin/modgate", "ca", "init"}) {
		t.Errorf("%s: modgate-ca runs %q with MODGATE_CA_DIR=%q, want modgate ca init in modgate's %q", file, ca.Command,
			envOf(ca)["MODGATE_CA_DIR"].Value, envOf(mg)["MODGATE_CA_DIR"].Value)
	}
	if mg.RestartPolicy == nil || *mg.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Errorf("%s: modgate init container has restartPolicy %v, want Always (a native sidecar)", file, mg.RestartPolicy)
	}
	ports := map[string]int32{}
	for _, p := range mg.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if ports["proxy"] != 7070 || ports["admin"] != 7071 {
		t.Errorf("%s: modgate ports %v, want proxy 7070 and admin 7071", file, ports)
	}
	for _, pr := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"startupProbe", mg.StartupProbe, "/readyz"}, {"readinessProbe", mg.ReadinessProbe, "/readyz"}, {"livenessProbe", mg.LivenessProbe, "/healthz"}} {
		if pr.probe == nil || pr.probe.HTTPGet == nil {
			t.Errorf("%s: modgate has no HTTP %s", file, pr.name)
			continue
		}
		if pr.probe.HTTPGet.Path != pr.path || portOf(mg, pr.probe.HTTPGet.Port) != 7071 {
			t.Errorf("%s: modgate %s is %s on port %v, want %s on 7071", file, pr.name, pr.probe.HTTPGet.Path, pr.probe.HTTPGet.Port.String(), pr.path)
		}
	}
	for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
		checkHardened(t, file+": "+c.Name, c.SecurityContext)
		if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
			t.Errorf("%s: %s has no cpu/memory requests or memory limit: %+v", file, c.Name, c.Resources)
		}
	}
	psc := spec.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: pod securityContext %+v, want runAsNonRoot and RuntimeDefault seccomp", file, psc)
	}

	// The config and the policy: mounted read-only from the ConfigMap, and
	// the environment points modgate at both files.
	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = v
	}
	var cfgMount *corev1.VolumeMount
	for i, m := range mg.VolumeMounts {
		if v := volumes[m.Name]; v.ConfigMap != nil && v.ConfigMap.Name == "modgate-config" {
			cfgMount = &mg.VolumeMounts[i]
		}
	}
	if cfgMount == nil || !cfgMount.ReadOnly {
		t.Fatalf("%s: modgate does not mount the modgate-config ConfigMap read-only: %+v", file, mg.VolumeMounts)
	}
	items := map[string]string{}
	for _, it := range volumes[cfgMount.Name].ConfigMap.Items {
		items[it.Key] = it.Path
	}
	menv := envOf(mg)
	for key, env := range map[string]string{"modgate.yaml": "MODGATE_CONFIG", "policy.yaml": "MODGATE_POLICY"} {
		if items[key] == "" {
			t.Errorf("%s: the ConfigMap volume does not project %s", file, key)
		}
		if want := cfgMount.MountPath + "/" + items[key]; menv[env].Value != want {
			t.Errorf("%s: %s=%q, want %q", file, env, menv[env].Value, want)
		}
	}
	// The CA directory: an emptyDir, writable by modgate. (An overlay may
	// mount more emptyDirs, e.g. the fleet's cache directory.)
	var caMount *corev1.VolumeMount
	for i, m := range mg.VolumeMounts {
		if volumes[m.Name].EmptyDir != nil && m.MountPath == menv["MODGATE_CA_DIR"].Value {
			caMount = &mg.VolumeMounts[i]
		}
	}
	if caMount == nil || caMount.ReadOnly || menv["MODGATE_CA_DIR"].Value != caMount.MountPath {
		t.Errorf("%s: modgate's CA directory is not a writable emptyDir named by MODGATE_CA_DIR: %+v", file, caMount)
	}

	// The build container.
	if len(spec.Containers) != 1 {
		t.Fatalf("%s: %d containers, want the build alone", file, len(spec.Containers))
	}
	b := spec.Containers[0]
	benv := envOf(b)
	if benv["GOPROXY"].Value != "http://127.0.0.1:7070" {
		t.Errorf("%s: build GOPROXY=%q, want http://127.0.0.1:7070", file, benv["GOPROXY"].Value)
	}
	if ref := benv["GONOSUMDB"].ValueFrom; ref == nil || ref.ConfigMapKeyRef == nil || ref.ConfigMapKeyRef.Name != "modgate-config" || ref.ConfigMapKeyRef.Key != "GONOSUMDB" {
		t.Errorf("%s: build GONOSUMDB does not come from the modgate-config ConfigMap: %+v", file, benv["GONOSUMDB"])
	}
	if benv["GOFLAGS"].Value != "-modcacherw" {
		t.Errorf("%s: build GOFLAGS=%q, want -modcacherw", file, benv["GOFLAGS"].Value)
	}
	if !strings.Contains(strings.Join(append(slices.Clone(b.Command), b.Args...), " "), "go build ./...") {
		t.Errorf("%s: build runs %q, want go build ./...", file, b.Command)
	}
	// A read-only root: everything the go command writes is on a volume.
	mounted := func(dir string) bool {
		for _, m := range b.VolumeMounts {
			if !m.ReadOnly && (dir == m.MountPath || strings.HasPrefix(dir, m.MountPath+"/")) {
				return true
			}
		}
		return false
	}
	for _, env := range []string{"HOME", "GOCACHE", "GOMODCACHE", "GOPATH"} {
		if !mounted(benv[env].Value) {
			t.Errorf("%s: build %s=%q is not on a writable volume", file, env, benv[env].Value)
		}
	}
	if !mounted(b.WorkingDir) {
		t.Errorf("%s: build workingDir %q is not on a writable volume", file, b.WorkingDir)
	}
	if spec.RestartPolicy != corev1.RestartPolicyNever {
		t.Errorf("%s: pod restartPolicy %q, want Never", file, spec.RestartPolicy)
	}
}

func TestBuildPodWiring(t *testing.T) {
	for _, file := range []string{"k8s/base/job.yaml", "k8s/examples/job.yaml"} {
		job := readJob(t, file)
		checkBuildPod(t, file, job.Spec.Template.Spec)
	}
	// The example is the base with a command: the sidecar must not drift.
	base, example := readJob(t, "k8s/base/job.yaml"), readJob(t, "k8s/examples/job.yaml")
	a, _ := json.Marshal(base.Spec.Template.Spec.InitContainers)
	b, _ := json.Marshal(example.Spec.Template.Spec.InitContainers)
	if !bytes.Equal(a, b) {
		t.Errorf("the modgate sidecar of examples/job.yaml differs from base/job.yaml:\n%s\n%s", a, b)
	}
}

func TestConfigMapKeepsPrivatePatternsInOnePlace(t *testing.T) {
	cm := readConfigMap(t)
	for _, key := range []string{"modgate.yaml", "policy.yaml", "GONOSUMDB"} {
		if cm.Data[key] == "" {
			t.Fatalf("ConfigMap has no %s", key)
		}
	}
	// The policy is read with plain YAML rather than modgate's policy
	// package, which would tie this module's dependencies to the root
	// module's; cmd/modgate's tests load the same ConfigMap with the real
	// config and policy loaders.
	var pol struct {
		Private []string `yaml:"private"`
		Routes  []struct {
			Upstreams []string `yaml:"upstreams"`
		} `yaml:"routes"`
	}
	if err := yaml.Unmarshal([]byte(cm.Data["policy.yaml"]), &pol); err != nil {
		t.Fatal(err)
	}
	var private []string
	for _, p := range pol.Private {
		for _, g := range strings.Split(p, ",") {
			private = append(private, strings.TrimSpace(g))
		}
	}
	if want := strings.Join(private, ","); cm.Data["GONOSUMDB"] != want {
		t.Errorf("GONOSUMDB=%q, but the policy's private patterns are %q", cm.Data["GONOSUMDB"], want)
	}
	// modgate.yaml is YAML with the upstreams the policy's routes name.
	var cfg struct {
		Upstreams []struct {
			Name string `yaml:"name"`
			URL  string `yaml:"url"`
		} `yaml:"upstreams"`
	}
	if err := yaml.Unmarshal([]byte(cm.Data["modgate.yaml"]), &cfg); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, u := range cfg.Upstreams {
		names = append(names, u.Name)
	}
	for _, r := range pol.Routes {
		for _, u := range r.Upstreams {
			if !slices.Contains(names, u) {
				t.Errorf("the policy routes to upstream %q, which modgate.yaml does not define (%q)", u, names)
			}
		}
	}
}

// kustomize builds a kustomization directory in memory, as `kubectl kustomize` does.
func kustomize(t *testing.T, dir string) []manifest {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	rm, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize %s: %v", dir, err)
	}
	out, err := rm.AsYaml()
	if err != nil {
		t.Fatal(err)
	}
	var ms []manifest
	for _, doc := range splitDocs(t, out) {
		ms = append(ms, decodeManifest(t, dir+" (built)", doc))
	}
	return ms
}

func builtJob(t *testing.T, ms []manifest) *batchv1.Job {
	t.Helper()
	for _, m := range ms {
		if j, ok := m.obj.(*batchv1.Job); ok {
			return j
		}
	}
	t.Fatal("no Job in the build")
	return nil
}

func TestKustomizeBaseAndOtelOverlay(t *testing.T) {
	base := kustomize(t, "k8s/base")
	if len(base) != 2 {
		t.Errorf("base builds %d objects, want the ConfigMap and the Job", len(base))
	}
	job := builtJob(t, base)
	checkBuildPod(t, "k8s/base (built)", job.Spec.Template.Spec)
	if job.Labels["app.kubernetes.io/part-of"] != "modgate" {
		t.Errorf("labels: %v", job.Labels)
	}

	otel := builtJob(t, kustomize(t, "k8s/overlays/otel"))
	checkBuildPod(t, "k8s/overlays/otel (built)", otel.Spec.Template.Spec)
	sidecar := otel.Spec.Template.Spec.InitContainers[slices.IndexFunc(otel.Spec.Template.Spec.InitContainers, func(c corev1.Container) bool { return c.Name == "modgate" })]
	env := envOf(sidecar)
	endpoint, err := url.Parse(env["OTEL_EXPORTER_OTLP_ENDPOINT"].Value)
	if err != nil || endpoint.Scheme != "http" || endpoint.Port() != "4318" || !strings.HasSuffix(endpoint.Hostname(), ".svc.cluster.local") {
		t.Errorf("OTEL_EXPORTER_OTLP_ENDPOINT=%q, want a collector Service's OTLP/HTTP port", env["OTEL_EXPORTER_OTLP_ENDPOINT"].Value)
	}
	if env["OTEL_SERVICE_NAME"].Value != "modgate" {
		t.Errorf("OTEL_SERVICE_NAME=%q", env["OTEL_SERVICE_NAME"].Value)
	}
	// The patch adds to the base's environment; it does not replace it.
	if env["MODGATE_CONFIG"].Value == "" {
		t.Errorf("the overlay lost the base's env: %v", env)
	}
	// $(VAR) references only work for variables defined before them.
	seen := map[string]bool{}
	for _, e := range sidecar.Env {
		for _, ref := range regexp.MustCompile(`\$\(([A-Z_]+)\)`).FindAllStringSubmatch(e.Value, -1) {
			if !seen[ref[1]] {
				t.Errorf("%s refers to $(%s) before it is defined", e.Name, ref[1])
			}
		}
		seen[e.Name] = true
	}
}

// fleetConfig is the part of modgate.yaml the fleet overlay adds.
type fleetConfig struct {
	Cache struct {
		Dir           string `yaml:"dir"`
		Shared        string `yaml:"shared"`
		SharedPrivate string `yaml:"shared_private"`
	} `yaml:"cache"`
	Fleet struct {
		Redis      string `yaml:"redis"`
		SecretFile string `yaml:"secret_file"`
	} `yaml:"fleet"`
}

// checkSharedURL checks a gocloud.dev/blob S3 URL of the form the fleet
// files use: a bucket, a region, and for an S3-compatible store its
// endpoint with path-style addressing.
func checkSharedURL(t *testing.T, where, raw string) *url.URL {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatalf("%s: cache.shared %q: %v", where, raw, err)
	}
	q := u.Query()
	if u.Scheme != "s3" || u.Host == "" || q.Get("region") == "" {
		t.Errorf("%s: cache.shared %q, want s3://BUCKET?region=...", where, raw)
	}
	if ep := q.Get("endpoint"); ep != "" {
		if e, err := url.Parse(ep); err != nil || (e.Scheme != "http" && e.Scheme != "https") || e.Host == "" {
			t.Errorf("%s: cache.shared endpoint %q is not an http(s) URL", where, ep)
		}
		if q.Get("use_path_style") != "true" {
			t.Errorf("%s: cache.shared %q names an endpoint without use_path_style=true", where, raw)
		}
	}
	for k := range q {
		// The parameters gocloud.dev v0.47.0's s3blob knows; anything else
		// fails blob.OpenBucket.
		if !slices.Contains([]string{"endpoint", "region", "use_path_style", "disable_https", "profile", "anonymous", "hostname_immutable"}, k) {
			t.Errorf("%s: cache.shared has parameter %q, which gocloud's s3blob does not take", where, k)
		}
	}
	return u
}

func TestKustomizeFleetOverlay(t *testing.T) {
	built := kustomize(t, "k8s/overlays/fleet")
	byKind := map[string][]any{}
	for _, m := range built {
		byKind[m.kind] = append(byKind[m.kind], m.obj)
	}
	for kind, n := range map[string]int{"ConfigMap": 1, "Job": 1, "Deployment": 1, "Service": 1, "NetworkPolicy": 1, "Secret": 0} {
		if len(byKind[kind]) != n {
			t.Errorf("the fleet overlay builds %d %s, want %d", len(byKind[kind]), kind, n)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	job := builtJob(t, built)
	spec := job.Spec.Template.Spec
	checkBuildPod(t, "k8s/overlays/fleet (built)", spec)
	mg := spec.InitContainers[slices.IndexFunc(spec.InitContainers, func(c corev1.Container) bool { return c.Name == "modgate" })]
	env := envOf(mg)

	// The store's credentials and the optional overrides come from the
	// Secret; the example Secret has every key the Job requires.
	data, err := os.ReadFile("k8s/overlays/fleet/secret.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	secret := decodeManifest(t, "secret.example.yaml", data).obj.(*corev1.Secret)
	for name, optional := range map[string]bool{"AWS_ACCESS_KEY_ID": false, "AWS_SECRET_ACCESS_KEY": false, "MODGATE_CACHE_SHARED": true, "MODGATE_FLEET_REDIS": true} {
		e := env[name]
		if e.Value != "" || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
			t.Errorf("modgate %s does not come from a Secret: %+v", name, e)
			continue
		}
		ref := e.ValueFrom.SecretKeyRef
		if ref.Name != secret.Name || ref.Key != name {
			t.Errorf("modgate %s comes from Secret %s key %s, want %s key %s", name, ref.Name, ref.Key, secret.Name, name)
		}
		if got := ref.Optional != nil && *ref.Optional; got != optional {
			t.Errorf("modgate %s: optional %v, want %v", name, got, optional)
		}
		if _, ok := secret.StringData[name]; !ok && !optional {
			t.Errorf("secret.example.yaml has no %s, which the Job requires", name)
		}
	}
	// Keys of the Secret mounted as files in the modgate container, by the
	// file's path.
	secretFiles := map[string]string{}
	for _, v := range spec.Volumes {
		if v.Secret == nil || v.Secret.SecretName != secret.Name {
			continue
		}
		for _, m := range mg.VolumeMounts {
			if m.Name != v.Name {
				continue
			}
			if !m.ReadOnly {
				t.Errorf("the Secret's volume %s is mounted writable", v.Name)
			}
			for _, it := range v.Secret.Items {
				secretFiles[m.MountPath+"/"+it.Path] = it.Key
			}
		}
	}
	for k, v := range secret.StringData {
		if (strings.HasPrefix(k, "AWS_") || k == "fleet.secret") && !strings.HasPrefix(v, "PLACEHOLDER") {
			t.Errorf("secret.example.yaml: %s=%q is not marked as a placeholder", k, v)
		}
		_, inEnv := env[k]
		inFile := slices.Contains(slices.Collect(maps.Values(secretFiles)), k)
		if !inEnv && !inFile {
			t.Errorf("secret.example.yaml has %s, which the modgate container does not read", k)
		}
	}
	if s := secret.StringData["MODGATE_CACHE_SHARED"]; s != "" {
		checkSharedURL(t, "secret.example.yaml", s)
	}
	// The patch adds to the base's environment; it does not replace it.
	if env["MODGATE_CONFIG"].Value == "" || env["MODGATE_CA_DIR"].Value == "" {
		t.Errorf("the overlay lost the base's env: %v", env)
	}

	// The config carries cache.shared and fleet.redis; the rest is the
	// base's, unchanged.
	cm := byKind["ConfigMap"][0].(*corev1.ConfigMap)
	baseCM := readConfigMap(t)
	for _, key := range []string{"policy.yaml", "GONOSUMDB"} {
		if cm.Data[key] != baseCM.Data[key] {
			t.Errorf("the overlay changed the ConfigMap's %s", key)
		}
	}
	var cfg fleetConfig
	if err := yaml.Unmarshal([]byte(cm.Data["modgate.yaml"]), &cfg); err != nil {
		t.Fatal(err)
	}
	checkSharedURL(t, "modgate.yaml", cfg.Cache.Shared)
	// fleet.redis needs fleet.secret_file: a key of the Secret, mounted.
	if key := secretFiles[cfg.Fleet.SecretFile]; key == "" || secret.StringData[key] == "" {
		t.Errorf("fleet.secret_file %q is not a key of Secret %s mounted in the modgate container (%v)", cfg.Fleet.SecretFile, secret.Name, secretFiles)
	}
	var overlayAll, baseAll map[string]any
	if err := yaml.Unmarshal([]byte(cm.Data["modgate.yaml"]), &overlayAll); err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal([]byte(baseCM.Data["modgate.yaml"]), &baseAll); err != nil {
		t.Fatal(err)
	}
	delete(overlayAll, "cache")
	delete(overlayAll, "fleet")
	a, _ := json.Marshal(baseAll)
	b, _ := json.Marshal(overlayAll)
	if !bytes.Equal(a, b) {
		t.Errorf("the fleet overlay's modgate.yaml is not the base's plus cache and fleet:\nbase:    %s\noverlay: %s", a, b)
	}

	// cache.dir is a writable emptyDir of the modgate container's own.
	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = v
	}
	var cacheMount *corev1.VolumeMount
	for i, m := range mg.VolumeMounts {
		if m.MountPath == cfg.Cache.Dir {
			cacheMount = &mg.VolumeMounts[i]
		}
	}
	if cfg.Cache.Dir == "" || cacheMount == nil || cacheMount.ReadOnly || volumes[cacheMount.Name].EmptyDir == nil || cacheMount.MountPath == env["MODGATE_CA_DIR"].Value {
		t.Errorf("cache.dir %q is not a writable emptyDir of its own in the modgate container: %+v", cfg.Cache.Dir, mg.VolumeMounts)
	}

	// fleet.redis names the Redis Service, whose selector picks the Redis
	// Deployment's pods on the port the container listens on.
	ru, err := url.Parse(cfg.Fleet.Redis)
	if err != nil || ru.Scheme != "redis" {
		t.Fatalf("fleet.redis %q is not a redis:// URL (%v)", cfg.Fleet.Redis, err)
	}
	svc := byKind["Service"][0].(*corev1.Service)
	dep := byKind["Deployment"][0].(*appsv1.Deployment)
	if ru.Hostname() != svc.Name || len(svc.Spec.Ports) != 1 || ru.Port() != strconv.Itoa(int(svc.Spec.Ports[0].Port)) {
		t.Errorf("fleet.redis %q does not name Service %s port %v", cfg.Fleet.Redis, svc.Name, svc.Spec.Ports)
	}
	for k, v := range svc.Spec.Selector {
		if dep.Spec.Template.Labels[k] != v || dep.Spec.Selector.MatchLabels[k] != v {
			t.Errorf("Service selector %s=%s does not pick the Deployment's pods (%v)", k, v, dep.Spec.Template.Labels)
		}
	}
	if len(dep.Spec.Template.Spec.Containers) != 1 {
		t.Fatalf("the Redis Deployment has %d containers, want 1", len(dep.Spec.Template.Spec.Containers))
	}
	redis := dep.Spec.Template.Spec.Containers[0]
	if !strings.HasPrefix(redis.Image, "redis:") {
		t.Errorf("Redis image %q", redis.Image)
	}
	if port := portOf(redis, svc.Spec.Ports[0].TargetPort); port != 6379 {
		t.Errorf("the Service's targetPort %v is container port %d, want 6379", svc.Spec.Ports[0].TargetPort.String(), port)
	}
	// No persistence: no RDB snapshots, no AOF, no PersistentVolume.
	args := strings.Join(quoteAll(append(slices.Clone(redis.Command), redis.Args...)), " ")
	if !strings.Contains(args, `--save ""`) || !strings.Contains(args, "--appendonly no") {
		t.Errorf("Redis runs with %s, want --save \"\" and --appendonly no", args)
	}
	for _, v := range dep.Spec.Template.Spec.Volumes {
		if v.EmptyDir == nil {
			t.Errorf("Redis volume %s is not an emptyDir: %+v", v.Name, v.VolumeSource)
		}
	}
	checkHardened(t, "redis", redis.SecurityContext)
	if redis.Resources.Requests.Cpu().IsZero() || redis.Resources.Limits.Memory().IsZero() {
		t.Errorf("redis has no cpu request or memory limit: %+v", redis.Resources)
	}
	if redis.ReadinessProbe == nil || redis.LivenessProbe == nil {
		t.Errorf("redis has no readiness or liveness probe")
	}
	// Only the build pods may reach it.
	np := byKind["NetworkPolicy"][0].(*networkingv1.NetworkPolicy)
	for k, v := range np.Spec.PodSelector.MatchLabels {
		if dep.Spec.Template.Labels[k] != v {
			t.Errorf("the NetworkPolicy does not select the Redis pods: %v", np.Spec.PodSelector.MatchLabels)
		}
	}
	if len(np.Spec.Ingress) != 1 || len(np.Spec.Ingress[0].From) != 1 || np.Spec.Ingress[0].From[0].PodSelector == nil {
		t.Fatalf("NetworkPolicy ingress %+v, want one rule from the build pods", np.Spec.Ingress)
	}
	for k, v := range np.Spec.Ingress[0].From[0].PodSelector.MatchLabels {
		if job.Spec.Template.Labels[k] != v {
			t.Errorf("the NetworkPolicy admits %s=%s, which the build pods (%v) do not carry", k, v, job.Spec.Template.Labels)
		}
	}
}

// quoteAll shows empty arguments as "" so that a flag's empty value is seen.
func quoteAll(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if a == "" {
			a = `""`
		}
		out[i] = a
	}
	return out
}

// ---- compose ----

func TestComposeWiresJaeger(t *testing.T) {
	data, err := os.ReadFile("compose/compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	type service struct {
		Image       string            `yaml:"image"`
		Environment map[string]string `yaml:"environment"`
		Ports       []string          `yaml:"ports"`
		ReadOnly    bool              `yaml:"read_only"`
		User        string            `yaml:"user"`
		CapDrop     []string          `yaml:"cap_drop"`
		DependsOn   []string          `yaml:"depends_on"`
		Build       *struct {
			Context    string `yaml:"context"`
			Dockerfile string `yaml:"dockerfile"`
		} `yaml:"build"`
		SecurityOpt []string `yaml:"security_opt"`
		Restart     string   `yaml:"restart"`
	}
	var doc struct {
		Name     string             `yaml:"name"`
		Services map[string]service `yaml:"services"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&doc); err != nil {
		t.Fatal(err)
	}
	mg, jaeger := doc.Services["modgate"], doc.Services["jaeger"]
	if !strings.HasPrefix(jaeger.Image, "jaegertracing/all-in-one:") {
		t.Errorf("jaeger image %q, want jaegertracing/all-in-one", jaeger.Image)
	}
	published := func(s service) map[string]bool {
		m := map[string]bool{}
		for _, p := range s.Ports {
			parts := strings.Split(p, ":")
			m[parts[len(parts)-1]] = true
			if len(parts) < 3 || parts[0] != "127.0.0.1" {
				t.Errorf("port %q is published beyond loopback", p)
			}
		}
		return m
	}
	if jp := published(jaeger); !jp["16686"] || !jp["4318"] {
		t.Errorf("jaeger publishes %v, want 16686 (UI) and 4318 (OTLP)", jaeger.Ports)
	}
	if mp := published(mg); !mp["7070"] || !mp["7071"] {
		t.Errorf("modgate publishes %v, want 7070 and 7071", mg.Ports)
	}
	ep, err := url.Parse(mg.Environment["OTEL_EXPORTER_OTLP_ENDPOINT"])
	if err != nil || ep.Hostname() != "jaeger" || ep.Port() != "4318" {
		t.Errorf("modgate OTEL_EXPORTER_OTLP_ENDPOINT=%q, want http://jaeger:4318", mg.Environment["OTEL_EXPORTER_OTLP_ENDPOINT"])
	}
	if !slices.Contains(mg.DependsOn, "jaeger") {
		t.Errorf("modgate does not depend on jaeger")
	}
	if mg.Build == nil || filepath.ToSlash(filepath.Join("compose", mg.Build.Context, mg.Build.Dockerfile)) != "../deploy/docker/Dockerfile" {
		t.Errorf("modgate build %+v does not build deploy/docker/Dockerfile from the repository root", mg.Build)
	}
	if !mg.ReadOnly || mg.User != "65532:65532" || !slices.Equal(mg.CapDrop, []string{"ALL"}) {
		t.Errorf("modgate is not hardened: read_only %v, user %q, cap_drop %v", mg.ReadOnly, mg.User, mg.CapDrop)
	}
}

func TestComposeFleet(t *testing.T) {
	data, err := os.ReadFile("compose/fleet.yaml")
	if err != nil {
		t.Fatal(err)
	}
	type dependency struct {
		Condition string `yaml:"condition"`
	}
	type service struct {
		Image       string                `yaml:"image"`
		Entrypoint  []string              `yaml:"entrypoint"`
		Command     []string              `yaml:"command"`
		Environment map[string]string     `yaml:"environment"`
		Ports       []string              `yaml:"ports"`
		Volumes     []string              `yaml:"volumes"`
		ReadOnly    bool                  `yaml:"read_only"`
		User        string                `yaml:"user"`
		CapDrop     []string              `yaml:"cap_drop"`
		SecurityOpt []string              `yaml:"security_opt"`
		DependsOn   map[string]dependency `yaml:"depends_on"`
		Healthcheck *struct {
			Test     []string `yaml:"test"`
			Interval string   `yaml:"interval"`
			Retries  int      `yaml:"retries"`
		} `yaml:"healthcheck"`
		Build *struct {
			Context    string `yaml:"context"`
			Dockerfile string `yaml:"dockerfile"`
		} `yaml:"build"`
		Restart string `yaml:"restart"`
	}
	var doc struct {
		Name     string             `yaml:"name"`
		XModgate service            `yaml:"x-modgate"`
		Services map[string]service `yaml:"services"`
		Volumes  map[string]any     `yaml:"volumes"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&doc); err != nil {
		t.Fatal(err)
	}

	s3, redis, init := doc.Services["s3"], doc.Services["redis"], doc.Services["init"]
	if s3.Image != "versity/versitygw:v1.8.0" {
		t.Errorf("s3 image %q, want versity/versitygw:v1.8.0", s3.Image)
	}
	if !strings.HasPrefix(redis.Image, "redis:") {
		t.Errorf("redis image %q", redis.Image)
	}
	if r := strings.Join(quoteAll(redis.Command), " "); !strings.Contains(r, `--save ""`) || !strings.Contains(r, "--appendonly no") {
		t.Errorf("redis runs %s, want no persistence", r)
	}
	// versitygw: global flags, then "posix [--sidecar DIR] ROOT", all on
	// the volume.
	i := slices.Index(s3.Command, "posix")
	if i < 0 || i == len(s3.Command)-1 {
		t.Fatalf("s3 runs %q, want the posix backend", s3.Command)
	}
	root := s3.Command[len(s3.Command)-1]
	mounted := func(s service, dir string) string {
		for _, v := range s.Volumes {
			name, path, _ := strings.Cut(v, ":")
			if dir == path || strings.HasPrefix(dir, path+"/") {
				return name + ":" + strings.TrimPrefix(dir, path)
			}
		}
		return ""
	}
	if mounted(s3, root) == "" {
		t.Errorf("the posix root %s is not on a volume: %v", root, s3.Volumes)
	}
	if j := slices.Index(s3.Command, "--sidecar"); j >= 0 && mounted(s3, s3.Command[j+1]) == "" {
		t.Errorf("the sidecar directory %s is not on a volume", s3.Command[j+1])
	}
	for _, s := range []service{s3, redis, init} {
		if len(s.Ports) > 0 {
			t.Errorf("%s publishes %v: the store and Redis are for the modgates alone", s.Image, s.Ports)
		}
	}

	// Three modgates with one store and one Redis, each with its own cache
	// volume and its own loopback ports.
	var modgates []string
	for name := range doc.Services {
		if strings.HasPrefix(name, "modgate") {
			modgates = append(modgates, name)
		}
	}
	slices.Sort(modgates)
	if len(modgates) != 3 {
		t.Fatalf("modgate services %v, want 3", modgates)
	}
	hostPorts := map[string]string{}
	cacheVolumes := map[string]string{}
	var shared, redisURL string
	for _, name := range modgates {
		mg := doc.Services[name]
		env := mg.Environment
		if shared == "" {
			shared, redisURL = env["MODGATE_CACHE_SHARED"], env["MODGATE_FLEET_REDIS"]
		}
		if env["MODGATE_CACHE_SHARED"] != shared || env["MODGATE_FLEET_REDIS"] != redisURL {
			t.Errorf("%s: MODGATE_CACHE_SHARED=%q MODGATE_FLEET_REDIS=%q, want the fleet's one store and Redis", name, env["MODGATE_CACHE_SHARED"], env["MODGATE_FLEET_REDIS"])
		}
		if env["AWS_ACCESS_KEY_ID"] != s3.Environment["ROOT_ACCESS_KEY_ID"] || env["AWS_SECRET_ACCESS_KEY"] != s3.Environment["ROOT_SECRET_ACCESS_KEY"] || env["AWS_ACCESS_KEY_ID"] == "" {
			t.Errorf("%s: AWS credentials are not the store's", name)
		}
		// fleet.redis needs fleet.secret_file: one file on a volume the
		// one-shot fills, the same for every modgate, mounted read-only.
		sf, secretVol := env["MODGATE_FLEET_SECRET_FILE"], ""
		for _, v := range mg.Volumes {
			if vol, dir, ok := strings.Cut(strings.TrimSuffix(v, ":ro"), ":"); ok && sf != "" && strings.HasPrefix(sf, dir+"/") {
				secretVol = vol
				if !strings.HasSuffix(v, ":ro") {
					t.Errorf("%s: the fleet secret's volume %s is not mounted read-only", name, v)
				}
			}
		}
		if secretVol == "" {
			t.Errorf("%s: MODGATE_FLEET_SECRET_FILE=%q is not on a volume", name, sf)
		} else if !slices.ContainsFunc(init.Volumes, func(v string) bool { return strings.HasPrefix(v, secretVol+":") }) || !strings.Contains(strings.Join(init.Command, " "), "/fleet/secret") {
			t.Errorf("%s: init does not make the fleet secret on volume %s", name, secretVol)
		}
		if env["AWS_EC2_METADATA_DISABLED"] != "true" {
			t.Errorf("%s: AWS_EC2_METADATA_DISABLED=%q, want true", name, env["AWS_EC2_METADATA_DISABLED"])
		}
		for _, dep := range []struct{ name, condition string }{{"init", "service_completed_successfully"}, {"s3", "service_healthy"}, {"redis", "service_healthy"}} {
			if mg.DependsOn[dep.name].Condition != dep.condition {
				t.Errorf("%s: depends_on %s %+v, want %s", name, dep.name, mg.DependsOn[dep.name], dep.condition)
			}
		}
		if mg.Build == nil || filepath.ToSlash(filepath.Join("compose", mg.Build.Context, mg.Build.Dockerfile)) != "../deploy/docker/Dockerfile" {
			t.Errorf("%s: build %+v does not build deploy/docker/Dockerfile from the repository root", name, mg.Build)
		}
		if !mg.ReadOnly || mg.User != "65532:65532" || !slices.Equal(mg.CapDrop, []string{"ALL"}) {
			t.Errorf("%s is not hardened: read_only %v, user %q, cap_drop %v", name, mg.ReadOnly, mg.User, mg.CapDrop)
		}
		vol := mounted(mg, env["MODGATE_CACHE_DIR"])
		if env["MODGATE_CACHE_DIR"] == "" || vol == "" {
			t.Errorf("%s: MODGATE_CACHE_DIR=%q is not on a volume", name, env["MODGATE_CACHE_DIR"])
		} else if other, dup := cacheVolumes[vol]; dup {
			t.Errorf("%s and %s share the cache volume %s", name, other, vol)
		} else {
			cacheVolumes[vol] = name
			// The one-shot hands the volume to modgate's user.
			volName, _, _ := strings.Cut(vol, ":")
			if !slices.ContainsFunc(init.Volumes, func(v string) bool { return strings.HasPrefix(v, volName+":") }) {
				t.Errorf("%s: init does not prepare the cache volume %s", name, volName)
			}
		}
		inner := map[string]bool{}
		for _, p := range mg.Ports {
			parts := strings.Split(p, ":")
			if len(parts) != 3 || parts[0] != "127.0.0.1" {
				t.Errorf("%s: port %q is published beyond loopback", name, p)
				continue
			}
			if other, dup := hostPorts[parts[1]]; dup {
				t.Errorf("%s and %s both publish host port %s", name, other, parts[1])
			}
			hostPorts[parts[1]] = name
			inner[parts[2]] = true
		}
		if !inner["7070"] || !inner["7071"] {
			t.Errorf("%s publishes %v, want its 7070 and 7071", name, mg.Ports)
		}
	}

	// The store URL names the s3 service and a bucket the one-shot makes
	// under the posix root; the Redis URL names the redis service.
	u := checkSharedURL(t, "compose/fleet.yaml", shared)
	ep, _ := url.Parse(u.Query().Get("endpoint"))
	if ep == nil || ep.Hostname() != "s3" || !slices.Contains(s3.Command, ":"+ep.Port()) {
		t.Errorf("MODGATE_CACHE_SHARED endpoint %v is not the s3 service's port (%q)", ep, s3.Command)
	}
	bucketDir := mounted(s3, root) + "/" + u.Host
	made := false
	for _, arg := range append(slices.Clone(init.Entrypoint), init.Command...) {
		for _, f := range strings.Fields(arg) {
			if strings.HasPrefix(f, "/") && mounted(init, f) == bucketDir {
				made = true
			}
		}
	}
	if !made {
		t.Errorf("init does not make the bucket directory %s (%q)", bucketDir, init.Command)
	}
	if ru, err := url.Parse(redisURL); err != nil || ru.Scheme != "redis" || ru.Hostname() != "redis" || ru.Port() != "6379" {
		t.Errorf("MODGATE_FLEET_REDIS=%q, want redis://redis:6379/...", redisURL)
	}
	for vol := range cacheVolumes {
		name, _, _ := strings.Cut(vol, ":")
		if _, ok := doc.Volumes[name]; !ok {
			t.Errorf("cache volume %s is not declared", name)
		}
	}
}

// ---- laptop service units ----

func TestSystemdUnit(t *testing.T) {
	data, err := os.ReadFile("systemd/modgate.service")
	if err != nil {
		t.Fatal(err)
	}
	sections := map[string]map[string][]string{}
	var cur string
	for n, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			cur = line[1 : len(line)-1]
			sections[cur] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || cur == "" {
				t.Fatalf("line %d: %q is not a key=value in a section", n+1, line)
			}
			sections[cur][k] = append(sections[cur][k], v)
		}
	}
	svc := sections["Service"]
	if len(svc["ExecStart"]) != 1 || !strings.HasPrefix(svc["ExecStart"][0], "%h/") && !strings.HasPrefix(svc["ExecStart"][0], "/") {
		t.Errorf("ExecStart %q: want one absolute command", svc["ExecStart"])
	} else if f := strings.Fields(svc["ExecStart"][0]); len(f) < 2 || filepath.Base(f[0]) != "modgate" || f[1] != "run" {
		t.Errorf("ExecStart %q: want modgate run", svc["ExecStart"])
	}
	if !slices.Contains([]string{"on-failure", "always", "on-abnormal"}, strings.Join(svc["Restart"], "")) {
		t.Errorf("Restart %q", svc["Restart"])
	}
	if !slices.Contains(sections["Install"]["WantedBy"], "default.target") {
		t.Errorf("a user unit is enabled by default.target; WantedBy %q", sections["Install"]["WantedBy"])
	}
}

func TestLaunchdPlist(t *testing.T) {
	file := "launchd/test.example.modgate.plist"
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	// Well-formed XML, read token by token into key/value pairs of the
	// top-level dict.
	dec := xml.NewDecoder(bytes.NewReader(data))
	dec.Strict = true
	var path []string
	top := map[string]string{}
	var args []string
	var key, text string
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s is not well-formed XML: %v", file, err)
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			path = append(path, tok.Name.Local)
			text = ""
			if len(path) == 3 && tok.Name.Local == "true" {
				top[key] = "true"
			}
		case xml.CharData:
			text += string(tok)
		case xml.EndElement:
			depth := len(path)
			switch {
			case depth == 3 && tok.Name.Local == "key":
				key = strings.TrimSpace(text)
			case depth == 3 && tok.Name.Local == "string":
				top[key] = strings.TrimSpace(text)
			case depth == 4 && path[2] == "array" && key == "ProgramArguments":
				args = append(args, strings.TrimSpace(text))
			}
			path = path[:depth-1]
		}
	}
	if want := strings.TrimSuffix(filepath.Base(file), ".plist"); top["Label"] != want {
		t.Errorf("Label %q, want %q (the file name)", top["Label"], want)
	}
	if len(args) < 2 || filepath.Base(args[0]) != "modgate" || args[1] != "run" || !filepath.IsAbs(args[0]) {
		t.Errorf("ProgramArguments %q, want an absolute modgate path and run", args)
	}
	if top["RunAtLoad"] != "true" {
		t.Errorf("RunAtLoad is not true")
	}
}
