package estate

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/yaml"
)

func TestDumpComplete(t *testing.T) {
	complete := "SET x;\n--\n-- PostgreSQL database dump complete\n--\n\n"
	assert.True(t, DumpComplete([]byte(complete)))
	assert.True(t, DumpComplete([]byte(complete+"\\unrestrict AbCdEf123\n\n")), "pg_dump ≥ 15.14 ends with \\unrestrict")
	assert.False(t, DumpComplete([]byte("SET x;\nCOPY public.devices (id) FROM stdin;\n1\n2\n")))
	assert.False(t, DumpComplete([]byte("-- PostgreSQL database dump complete\nCOPY x FROM stdin;\n")), "the line must be the last one")
	assert.False(t, DumpComplete(nil))
}

func TestCleanSecretYAML(t *testing.T) {
	ctrl := true
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name: "flightctl-ca", Namespace: "flightctl", UID: types.UID("1234"), ResourceVersion: "77", Generation: 2,
			CreationTimestamp: metav1.Now(), Labels: map[string]string{"app": "x"},
			ManagedFields:   []metav1.ManagedFieldsEntry{{Manager: "helm"}},
			OwnerReferences: []metav1.OwnerReference{{Name: "o", Kind: "Thing", APIVersion: "v1", UID: "9", Controller: &ctrl}},
		},
		Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{"tls.crt": []byte("CERT"), "tls.key": []byte("KEY")},
	}
	y, err := CleanSecretYAML(s)
	require.NoError(t, err)
	for _, f := range []string{"uid:", "resourceVersion:", "managedFields:", "ownerReferences:", "creationTimestamp:", "generation:"} {
		assert.NotContains(t, string(y), f)
	}
	var back corev1.Secret
	require.NoError(t, yaml.Unmarshal(y, &back))
	assert.Equal(t, "Secret", back.Kind)
	assert.Equal(t, "v1", back.APIVersion)
	assert.Equal(t, "flightctl-ca", back.Name)
	assert.Equal(t, "flightctl", back.Namespace)
	assert.Equal(t, s.Data, back.Data)
	assert.Equal(t, s.Labels, back.Labels)
	assert.Equal(t, "77", s.ResourceVersion, "the live object is left alone")
}

func TestDecodeHelmRelease(t *testing.T) {
	js, _ := json.Marshal(map[string]any{"name": "flightctl", "namespace": "fc", "version": 4, "info": map[string]any{"status": "deployed"},
		"chart": map[string]any{"metadata": map[string]any{"name": "flightctl", "version": "0.10.1", "appVersion": "0.10.1"}}})
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(js)
	zw.Close()
	rel, err := DecodeHelmRelease([]byte(base64.StdEncoding.EncodeToString(gz.Bytes())))
	require.NoError(t, err)
	assert.Equal(t, "flightctl", rel.Name)
	assert.Equal(t, 4, rel.Version)
	assert.Equal(t, "0.10.1", rel.Chart.Metadata.AppVersion)

	rel, err = DecodeHelmRelease([]byte(base64.StdEncoding.EncodeToString(js)))
	require.NoError(t, err, "plain JSON is read too")
	assert.Equal(t, "fc", rel.Namespace)

	_, err = DecodeHelmRelease([]byte("%%%"))
	assert.ErrorContains(t, err, "not base64")
	_, err = DecodeHelmRelease(nil)
	assert.Error(t, err)
}

func TestKubernetesPermissions(t *testing.T) {
	b := &KubernetesBackup{Config: KubernetesConfig{Namespace: "fc", InternalNamespace: "fc-int"}}
	var names []string
	for _, p := range b.Permissions() {
		names = append(names, p.String())
	}
	assert.Equal(t, []string{
		"get secrets in namespace fc", "list secrets in namespace fc", "get deployments.apps in namespace fc-int",
		"get secrets in namespace fc-int", "list pods in namespace fc-int",
		"create pods/exec in namespace fc-int", "get pods/exec in namespace fc-int",
	}, names)
	b.Config.DBAccess = DBAccessDirect
	assert.Len(t, b.Permissions(), 4, "direct access needs no exec")
}

func TestKubernetesRestorePermissions(t *testing.T) {
	k := &KubernetesRestore{Config: WithKubernetesDefaults(KubernetesConfig{Namespace: "fc", InternalNamespace: "fc-int"}),
		Restore: KubernetesRestoreConfig{DevprepAccess: DevprepPortForward}}
	var names []string
	for _, p := range k.Permissions() {
		names = append(names, p.String())
	}
	for _, ns := range []string{"fc", "fc-int"} {
		for _, want := range []string{"get secrets", "create secrets", "patch secrets", "update secrets", "delete secrets",
			"get deployments.apps", "patch deployments.apps", "get deployments.apps/scale", "patch deployments.apps/scale", "list pods"} {
			assert.Contains(t, names, want+" in namespace "+ns)
		}
	}
	assert.Contains(t, names, "create pods/exec in namespace fc-int")
	assert.Contains(t, names, "create pods/portforward in namespace fc-int")
	assert.NotContains(t, names, "create pods/exec in namespace fc", "the database is in the internal namespace")
	k.Config.DBAccess, k.Restore.DevprepAccess = DBAccessDirect, DevprepDirect
	names = nil
	for _, p := range k.Permissions() {
		names = append(names, p.String())
	}
	assert.NotContains(t, names, "create pods/exec in namespace fc-int")
	assert.NotContains(t, names, "create pods/portforward in namespace fc-int")
}
