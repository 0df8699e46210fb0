terraform {
  required_version = ">= 1.6"
  required_providers {
    volcengine = {
      source  = "volcengine/volcengine"
      version = ">= 0.0.161, < 0.1.0"
    }
  }
}
