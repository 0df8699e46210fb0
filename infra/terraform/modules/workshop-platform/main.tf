# The workshop platform on any Kubernetes cluster: namespaces, the shared model cache and the Job
# that seeds it, the KubeRay operator (CRDs applied server-side) with a shared RayCluster,
# JupyterHub for attendees, and quota and network guardrails for the attendee namespaces.

locals {
  nfs       = var.model_cache.nfs_server != ""
  cache_pvc = "labkit-models"
  # With NFS both namespaces see the same export; with a storage class each PVC is its own volume.
  seed_namespaces = var.enable_model_seed_job ? (local.nfs ? [var.ray_namespace] : [var.ray_namespace, var.hub_namespace]) : []
  labels          = { "app.kubernetes.io/part-of" = "labkit-workshop", "app.kubernetes.io/managed-by" = "terraform" }
}

module "values" {
  source = "./values"
  settings = {
    attendees                 = var.attendees
    auth_mode                 = var.auth_mode
    admin_users               = var.admin_users
    hub_service_type          = var.hub_service_type
    source_ranges             = var.hub_source_ranges
    image                     = var.workshop_image
    gpu_image                 = var.workshop_gpu_image
    labs_repo                 = var.labs_repo
    labs_branch               = var.labs_branch
    cpu_limit                 = var.user_limits.cpu
    memory_limit              = var.user_limits.memory
    gpu_cpu_limit             = var.user_limits.gpu_cpu
    gpu_memory_limit          = var.user_limits.gpu_memory
    home_size                 = var.user_limits.home_size
    idle_timeout_minutes      = var.idle_timeout_minutes
    placeholder_share         = var.placeholder_share
    doors_open                = var.doors_open
    enable_gpu_profiles       = var.enable_gpu_profiles
    enable_shared_gpu_profile = var.enable_shared_gpu_profile
    shared_gpu_resource       = var.shared_gpu_resource
    system_node_selector      = var.system_node_selector
    gpu_node_selector         = var.gpu_node_selector
    gpu_taint_key             = var.gpu_taint_key
    ray_namespace             = var.ray_namespace
    ray_cluster_name          = "room"
    ray_version               = local.versions.ray
    ray_cpu_workers_max       = var.ray_workers_max.cpu
    ray_gpu_workers_max       = var.ray_workers_max.gpu
    model_cache_claim         = local.cache_pvc
    jupyterhub_chart_version  = local.versions.jupyterhub_chart
    kuberay_chart_version     = local.versions.kuberay
    kuberay_operator_image    = local.kuberay_operator_image
  }
}

resource "kubernetes_namespace_v1" "ray" {
  metadata {
    name   = var.ray_namespace
    labels = local.labels
  }
}

resource "kubernetes_namespace_v1" "hub" {
  metadata {
    name   = var.hub_namespace
    labels = local.labels
  }
}

# ---------------------------------------------------------------------------------------------
# Shared model cache: read-only in notebooks and Ray pods, written once by the seeding Job.
# ---------------------------------------------------------------------------------------------

resource "kubernetes_persistent_volume_v1" "models" {
  for_each = local.nfs ? toset([var.ray_namespace, var.hub_namespace]) : toset([])
  metadata {
    name   = "labkit-models-${each.key}"
    labels = local.labels
  }
  spec {
    capacity                         = { storage = var.model_cache.size }
    access_modes                     = ["ReadWriteMany"]
    persistent_volume_reclaim_policy = "Retain" # the models outlive a namespace re-create
    storage_class_name               = ""
    persistent_volume_source {
      nfs {
        server = var.model_cache.nfs_server
        path   = var.model_cache.nfs_path
      }
    }
  }
}

resource "kubernetes_persistent_volume_claim_v1" "models" {
  for_each = toset([var.ray_namespace, var.hub_namespace])
  metadata {
    name      = local.cache_pvc
    namespace = each.key
    labels    = local.labels
  }
  spec {
    access_modes       = ["ReadWriteMany"]
    storage_class_name = local.nfs ? "" : var.model_cache.storage_class
    volume_name        = local.nfs ? kubernetes_persistent_volume_v1.models[each.key].metadata[0].name : null
    resources {
      requests = { storage = var.model_cache.size }
    }
  }
  wait_until_bound = false
  depends_on       = [kubernetes_namespace_v1.ray, kubernetes_namespace_v1.hub]
}

resource "kubernetes_job_v1" "seed_models" {
  for_each = toset(local.seed_namespaces)
  metadata {
    name      = "labkit-seed-models"
    namespace = each.key
    labels    = local.labels
  }
  spec {
    backoff_limit              = 3
    ttl_seconds_after_finished = 86400
    template {
      metadata {
        labels = local.labels
      }
      spec {
        restart_policy                  = "OnFailure"
        automount_service_account_token = false
        node_selector                   = var.system_node_selector
        security_context {
          run_as_user     = 1000
          run_as_non_root = true
          fs_group        = 100
          seccomp_profile {
            type = "RuntimeDefault"
          }
        }
        container {
          name              = "seed"
          image             = var.workshop_gpu_image
          image_pull_policy = "IfNotPresent"
          # Both profiles: CPU servers use the cpu models, GPU servers and Ray GPU workers the gpu ones.
          command = ["sh", "-c", "labkit models pull --profile cpu && labkit models pull --profile gpu && labkit models verify"]
          env {
            name  = "LABKIT_HOME"
            value = "/var/lib/labkit"
          }
          dynamic "env" {
            for_each = var.hf_endpoint == "" ? [] : [var.hf_endpoint]
            content {
              name  = "HF_ENDPOINT"
              value = env.value
            }
          }
          resources {
            requests = { cpu = "1", memory = "4Gi" }
            limits   = { cpu = "2", memory = "8Gi" }
          }
          volume_mount {
            name       = "models"
            mount_path = "/var/lib/labkit/models"
          }
          security_context {
            allow_privilege_escalation = false
            read_only_root_filesystem  = false
            capabilities {
              drop = ["ALL"]
            }
          }
        }
        volume {
          name = "models"
          persistent_volume_claim {
            claim_name = local.cache_pvc
          }
        }
      }
    }
  }
  wait_for_completion = false # `kubectl -n labkit logs job/labkit-seed-models -f` to follow it
  depends_on          = [kubernetes_persistent_volume_claim_v1.models]
}

# ---------------------------------------------------------------------------------------------
# KubeRay: CRDs applied server-side (too large for client-side apply's annotation), then the
# operator chart without its CRDs, then the room's shared RayCluster.
# ---------------------------------------------------------------------------------------------

data "http" "kuberay_crd" {
  for_each = var.enable_kuberay ? toset(local.kuberay_crd_files) : toset([])
  url      = "${var.kuberay_crds_base_url}/${each.key}"
  lifecycle {
    postcondition {
      condition     = self.status_code == 200
      error_message = "Could not fetch ${each.key} (HTTP ${self.status_code}); set kuberay_crds_base_url to a reachable mirror."
    }
  }
}

resource "kubernetes_manifest" "kuberay_crd" {
  for_each = data.http.kuberay_crd
  manifest = provider::kubernetes::manifest_decode(each.value.response_body)
  field_manager {
    name            = "labkit-terraform"
    force_conflicts = true
  }
}

resource "helm_release" "kuberay_operator" {
  count      = var.enable_kuberay ? 1 : 0
  name       = "kuberay-operator"
  repository = var.chart_repositories.kuberay
  chart      = "kuberay-operator"
  version    = local.versions.kuberay
  namespace  = kubernetes_namespace_v1.ray.metadata[0].name
  skip_crds  = true
  values     = [module.values.kuberay_values]
  depends_on = [kubernetes_manifest.kuberay_crd]
}

resource "helm_release" "shared_ray_cluster" {
  count      = var.enable_kuberay ? 1 : 0
  name       = "labkit-room-ray"
  chart      = "${path.module}/charts/manifests"
  namespace  = kubernetes_namespace_v1.ray.metadata[0].name
  values     = [yamlencode({ manifests = [yamldecode(module.values.ray_cluster)] })]
  depends_on = [helm_release.kuberay_operator, kubernetes_persistent_volume_claim_v1.models]
}

# ---------------------------------------------------------------------------------------------
# JupyterHub
# ---------------------------------------------------------------------------------------------

resource "helm_release" "jupyterhub" {
  count      = var.enable_jupyterhub ? 1 : 0
  name       = "jupyterhub"
  repository = var.chart_repositories.jupyterhub
  chart      = "jupyterhub"
  version    = local.versions.jupyterhub_chart
  namespace  = kubernetes_namespace_v1.hub.metadata[0].name
  values     = [module.values.jupyterhub_values]
  timeout    = 1800 # the image pre-puller pulls the workshop images on every node first

  dynamic "set_sensitive" {
    for_each = var.auth_mode == "shared-password" ? {
      "hub.config.SharedPasswordAuthenticator.user_password"  = var.shared_password
      "hub.config.SharedPasswordAuthenticator.admin_password" = var.admin_password
    } : {}
    content {
      name  = set_sensitive.key
      value = set_sensitive.value
    }
  }

  lifecycle {
    precondition {
      condition     = var.auth_mode != "shared-password" || (var.shared_password != null && var.admin_password != null)
      error_message = "auth_mode = \"shared-password\" needs shared_password (8+ characters) and admin_password (32+)."
    }
  }
  depends_on = [kubernetes_persistent_volume_claim_v1.models]
}

data "kubernetes_service_v1" "hub" {
  count = var.enable_jupyterhub ? 1 : 0
  metadata {
    name      = "proxy-public"
    namespace = kubernetes_namespace_v1.hub.metadata[0].name
  }
  depends_on = [helm_release.jupyterhub]
}

# ---------------------------------------------------------------------------------------------
# Guardrails for the attendee namespaces
# ---------------------------------------------------------------------------------------------

resource "kubernetes_resource_quota_v1" "attendees" {
  metadata {
    name      = "attendees"
    namespace = kubernetes_namespace_v1.hub.metadata[0].name
  }
  spec {
    hard = {
      # Everyone on a CPU server at once, plus the placeholders (pending ones count too) and the hub's pods.
      "limits.cpu"                          = (var.attendees + module.values.user_placeholders) * var.user_limits.cpu + 8
      "requests.nvidia.com/gpu"             = var.max_gpu_servers
      "persistentvolumeclaims"              = var.attendees * 2 + 10
      "services.loadbalancers"              = 1
      "services.nodeports"                  = 0
      "requests.${var.shared_gpu_resource}" = var.max_gpu_servers * 4
    }
  }
}

resource "kubernetes_resource_quota_v1" "ray" {
  metadata {
    name      = "ray"
    namespace = kubernetes_namespace_v1.ray.metadata[0].name
  }
  spec {
    hard = {
      "requests.nvidia.com/gpu" = var.ray_workers_max.gpu
      "services.loadbalancers"  = 0 # Ray dashboards and GCS are never exposed outside the cluster
      "services.nodeports"      = 0
    }
  }
}

resource "kubernetes_network_policy_v1" "ray_ingress" {
  metadata {
    name      = "ray-ingress"
    namespace = kubernetes_namespace_v1.ray.metadata[0].name
  }
  spec {
    pod_selector {}
    policy_types = ["Ingress"]
    # Pods of this namespace (Ray heads, workers, the operator) talk freely.
    ingress {
      from {
        pod_selector {}
      }
    }
    # Notebook servers reach the jobs API, the Ray client port and Serve; nothing else.
    ingress {
      from {
        namespace_selector {
          match_labels = { "kubernetes.io/metadata.name" = var.hub_namespace }
        }
      }
      dynamic "ports" {
        for_each = [8265, 10001, 8000]
        content {
          port     = ports.value
          protocol = "TCP"
        }
      }
    }
  }
}
