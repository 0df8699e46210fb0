# Renders the platform's Helm values and the room's shared RayCluster from plain inputs. No
# providers: the test suite renders it with a real Terraform, offline, and validates the output
# against the JupyterHub chart's values schema and KubeRay's CRDs.

terraform {
  required_version = ">= 1.6"
}

variable "settings" {
  description = "Everything the platform module decides; see that module's variables for each field."
  type = object({
    attendees                 = number
    auth_mode                 = string
    admin_users               = list(string)
    hub_service_type          = string
    source_ranges             = list(string)
    image                     = string
    gpu_image                 = string
    labs_repo                 = string
    labs_branch               = string
    cpu_limit                 = number
    memory_limit              = string
    gpu_cpu_limit             = number
    gpu_memory_limit          = string
    home_size                 = string
    idle_timeout_minutes      = number
    placeholder_share         = number
    doors_open                = bool
    enable_gpu_profiles       = bool
    enable_shared_gpu_profile = bool
    shared_gpu_resource       = string
    system_node_selector      = map(string)
    gpu_node_selector         = map(string)
    gpu_taint_key             = string
    ray_namespace             = string
    ray_cluster_name          = string
    ray_version               = string
    ray_cpu_workers_max       = number
    ray_gpu_workers_max       = number
    model_cache_claim         = string
    jupyterhub_chart_version  = string
    kuberay_chart_version     = string
    kuberay_operator_image    = string
  })
}

locals {
  s               = var.settings
  gpu_tolerations = [{ key = local.s.gpu_taint_key, operator = "Exists", effect = "NoSchedule" }]
  image_name      = regex("^(.*):([^:/]+)$", local.s.image)[0]
  image_tag       = regex("^(.*):([^:/]+)$", local.s.image)[1]
  ray_head_url    = "http://${local.s.ray_cluster_name}-head-svc.${local.s.ray_namespace}.svc:8265"
  # Placeholders hold room on running nodes so arrivals don't wait for a node to boot: a real user
  # evicts one and starts at once, the evicted one waits for the autoscaler's next node. While the
  # doors open (the whole room clicks "start" in the same minute) one per attendee; afterwards a
  # share of the room for late arrivals.
  user_placeholders = local.s.doors_open ? local.s.attendees : ceil(local.s.attendees * local.s.placeholder_share)

  jupyterhub_values = templatefile("${path.module}/templates/jupyterhub-values.yaml.tftpl", {
    chart_version             = local.s.jupyterhub_chart_version
    auth_mode                 = local.s.auth_mode
    authenticator_class       = local.s.auth_mode == "native" ? "native" : "shared-password"
    allow_all                 = local.s.auth_mode == "shared-password"
    admin_users               = local.s.admin_users
    system_node_selector      = local.s.system_node_selector
    hub_service_type          = local.s.hub_service_type
    source_ranges             = local.s.source_ranges
    image_name                = local.image_name
    image_tag                 = local.image_tag
    gpu_image                 = local.s.gpu_image
    cpu_limit                 = local.s.cpu_limit
    cpu_guarantee             = local.s.cpu_limit / 4
    memory_limit              = local.s.memory_limit
    memory_guarantee          = local.s.memory_limit
    gpu_cpu_limit             = local.s.gpu_cpu_limit
    gpu_memory_limit          = local.s.gpu_memory_limit
    home_size                 = local.s.home_size
    model_cache_claim         = local.s.model_cache_claim
    ray_dashboard_address     = local.ray_head_url
    labs_repo                 = local.s.labs_repo
    labs_branch               = local.s.labs_branch
    enable_gpu_profiles       = local.s.enable_gpu_profiles
    enable_shared_gpu_profile = local.s.enable_shared_gpu_profile
    shared_gpu_resource       = local.s.shared_gpu_resource
    shared_gpu_limits         = { (local.s.shared_gpu_resource) = "1" }
    gpu_node_selector         = local.s.gpu_node_selector
    gpu_tolerations           = local.gpu_tolerations
    cull_timeout_seconds      = local.s.idle_timeout_minutes * 60
    user_placeholders         = local.user_placeholders
  })

  kuberay_values = templatefile("${path.module}/templates/kuberay-values.yaml.tftpl", {
    chart_version        = local.s.kuberay_chart_version
    image_repository     = regex("^(.*):([^:/]+)$", local.s.kuberay_operator_image)[0]
    image_tag            = regex("^(.*):([^:/]+)$", local.s.kuberay_operator_image)[1]
    system_node_selector = local.s.system_node_selector
  })

  # The room's shared RayCluster (what lab 07 submits jobs to). Same shape as labkit's presets:
  # ClusterIP head, token auth, model cache read-only, GPU workers scale from zero.
  container_security = {
    allowPrivilegeEscalation = false
    capabilities             = { drop = ["ALL"] }
    runAsNonRoot             = true
    runAsUser                = 1000
  }
  model_cache_volume = { name = "model-cache", persistentVolumeClaim = { claimName = local.s.model_cache_claim, readOnly = true } }
  model_cache_mount  = { name = "model-cache", mountPath = "/var/lib/labkit/models", readOnly = true }
  ray_env = [
    { name = "LABKIT_HOME", value = "/var/lib/labkit" },
    { name = "HF_HUB_OFFLINE", value = "1" },
  ]
  worker_groups = concat(
    [{
      groupName      = "cpu"
      replicas       = 1
      minReplicas    = 1
      maxReplicas    = local.s.ray_cpu_workers_max
      rayStartParams = {}
      template = { spec = {
        containers = [{
          name            = "ray-worker"
          image           = local.s.image
          imagePullPolicy = "IfNotPresent"
          resources       = { requests = { cpu = "4", memory = "8Gi" }, limits = { cpu = "4", memory = "8Gi" } }
          env             = concat(local.ray_env, [{ name = "LABKIT_PROFILE", value = "cpu" }])
          volumeMounts    = [local.model_cache_mount]
          securityContext = local.container_security
        }]
        volumes                      = [local.model_cache_volume]
        nodeSelector                 = local.s.system_node_selector
        automountServiceAccountToken = false
      } }
    }],
    local.s.ray_gpu_workers_max > 0 ? [{
      groupName      = "gpu"
      replicas       = 0
      minReplicas    = 0
      maxReplicas    = local.s.ray_gpu_workers_max
      rayStartParams = { "num-gpus" = "1" }
      template = { spec = {
        containers = [{
          name            = "ray-worker"
          image           = local.s.gpu_image
          imagePullPolicy = "IfNotPresent"
          resources = {
            requests = { cpu = "8", memory = "48Gi", "nvidia.com/gpu" = "1" }
            limits   = { cpu = "8", memory = "48Gi", "nvidia.com/gpu" = "1" }
          }
          env             = concat(local.ray_env, [{ name = "LABKIT_PROFILE", value = "gpu" }])
          volumeMounts    = [local.model_cache_mount]
          securityContext = local.container_security
        }]
        volumes                      = [local.model_cache_volume]
        nodeSelector                 = local.s.gpu_node_selector
        tolerations                  = local.gpu_tolerations
        automountServiceAccountToken = false
      } }
    }] : []
  )
  ray_cluster = {
    apiVersion = "ray.io/v1"
    kind       = "RayCluster"
    metadata = {
      name      = local.s.ray_cluster_name
      namespace = local.s.ray_namespace
      labels    = { "app.kubernetes.io/name" = "labkit", "app.kubernetes.io/managed-by" = "terraform" }
    }
    spec = {
      rayVersion              = local.s.ray_version
      enableInTreeAutoscaling = true
      authOptions             = { mode = "token" }
      autoscalerOptions       = { upscalingMode = "Default", idleTimeoutSeconds = 600 }
      headGroupSpec = {
        serviceType    = "ClusterIP"
        rayStartParams = { "dashboard-host" = "0.0.0.0", "num-cpus" = "0" }
        template = { spec = {
          containers = [{
            name            = "ray-head"
            image           = local.s.image
            imagePullPolicy = "IfNotPresent"
            resources       = { requests = { cpu = "2", memory = "8Gi" }, limits = { cpu = "2", memory = "8Gi" } }
            env             = concat(local.ray_env, [{ name = "LABKIT_PROFILE", value = "cpu" }])
            ports = [
              { name = "gcs", containerPort = 6379 },
              { name = "dashboard", containerPort = 8265 },
              { name = "client", containerPort = 10001 },
            ]
            volumeMounts    = [local.model_cache_mount]
            securityContext = local.container_security
          }]
          volumes                      = [local.model_cache_volume]
          nodeSelector                 = local.s.system_node_selector
          automountServiceAccountToken = false
        } }
      }
      workerGroupSpecs = local.worker_groups
    }
  }
}

output "jupyterhub_values" {
  description = "Values for the jupyterhub chart (YAML)."
  value       = local.jupyterhub_values
}

output "kuberay_values" {
  description = "Values for the kuberay-operator chart (YAML)."
  value       = local.kuberay_values
}

output "ray_cluster" {
  description = "The room's shared RayCluster manifest (YAML)."
  value       = yamlencode(local.ray_cluster)
}

output "user_placeholders" {
  description = "How many user placeholders the hub keeps (the attendee quota counts them)."
  value       = local.user_placeholders
}

output "ray_dashboard_address" {
  description = "In-cluster address of the shared cluster's jobs API (what notebooks use)."
  value       = local.ray_head_url
}
